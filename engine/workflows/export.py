"""Export a trained run to a folder that plain PyTorch serves, no engine import needed.

Format: ``torch.export`` (model.pt2, ``torch.export.save``/``load``). It is PyTorch's supported whole-graph
format (TorchScript is in maintenance), needs no extra package (ONNX needs ``onnx``/``onnxruntime``), keeps
the batch dimension dynamic, and the loaded program runs the same ATen kernels as the eager model, so its
outputs equal the engine's (tests/tools/test_export.py). Beside it: tokenizer/ (save_pretrained),
preprocess.json (classes, image size and normalisation, columns, text length, the tabular statistics and
vocabularies fitted on the train split) and predict.py (PIL + torchvision + transformers preprocessing).
The graph takes (images [B,3,S,S] fp32 normalised, input_ids [B,L], attention_mask [B,L], numeric [B,N] fp32,
categorical [B,K] int64) and returns class probabilities [B,C].
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

STANDALONE = Path(__file__).with_name("_standalone_predict.py")


class ProbabilityHead(torch.nn.Module):
    """The fusion model's forward returning softmax probabilities (a plain tensor: exportable, no dataclass)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, input_ids, attention_mask, numeric, categorical):
        return torch.softmax(self.model(images, input_ids, attention_mask, numeric, categorical).logits.float(), dim=1)


def preprocess_meta(cfg, ctx) -> dict:
    return {"classes": list(ctx.classes), "image_column": cfg.data.image_column, "image_size": cfg.data.image_size,
            "resize": int(round(cfg.data.image_size / cfg.augment.eval_crop_pct)), "mean": list(cfg.augment.mean),
            "std": list(cfg.augment.std), "text_column": cfg.data.text_column if ctx.tokenizer is not None else None,
            "text_max_length": ctx.text_max_length, "tabular": ctx.tabular.to_dict(),
            "inputs": ["images", "input_ids", "attention_mask", "numeric", "categorical"], "output": "probabilities"}


def export_model(module: torch.nn.Module, example: dict[str, torch.Tensor], cfg, ctx, out: Path) -> list[Path]:
    """Write OUT/model.pt2, OUT/preprocess.json, OUT/tokenizer/, OUT/predict.py; ``example``: one input batch."""
    out.mkdir(parents=True, exist_ok=True)
    head = ProbabilityHead(module.eval()).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(head, (), dict(example), dynamic_shapes={k: {0: batch} for k in example})
    torch.export.save(program, str(out / "model.pt2"))
    (out / "preprocess.json").write_text(json.dumps(preprocess_meta(cfg, ctx), indent=2))
    if ctx.tokenizer is not None:
        ctx.tokenizer.save_pretrained(str(out / "tokenizer"))
    shutil.copyfile(STANDALONE, out / "predict.py")
    return [out / n for n in ("model.pt2", "preprocess.json", "predict.py")]
