"""Export a trained run for serving with plain PyTorch (torch.export), no engine import needed.

    python tools/export.py --run runs/demo --out exports/demo [--checkpoint best]
    python exports/demo/predict.py new.csv --out preds.csv      # anywhere with torch, torchvision, Pillow, transformers

Writes OUT/model.pt2 (torch.export.load(...).module() -> probabilities), OUT/preprocess.json, OUT/tokenizer/,
OUT/predict.py. Why torch.export and what the graph takes: engine/workflows/export.py, docs/workflows.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine.errors import exit_on_user_error  # noqa: E402


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder (config.yaml, checkpoints/)")
    ap.add_argument("--out", type=Path, required=True, help="export folder")
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    args, overrides = ap.parse_known_args(argv)

    import torch
    from predict import load_run_model

    from engine.workflows.export import export_model

    cfg, ctx, module, device = load_run_model(args.run, args.checkpoint, overrides)
    if getattr(cfg.model, "task", None) == "retrieval":
        from engine.errors import ConfigError

        raise ConfigError(f"model.task={cfg.model.task!r}: tools/export.py exports classifiers only")
    n, s, length = 2, cfg.data.image_size, ctx.text_max_length  # batch 2: the batch dimension stays symbolic
    example = dict(images=torch.zeros(n, 3, s, s), input_ids=torch.zeros(n, length, dtype=torch.long),
                   attention_mask=torch.ones(n, length, dtype=torch.long),
                   numeric=torch.zeros(n, len(ctx.tabular.numeric_columns)),
                   categorical=torch.zeros(n, len(ctx.tabular.categorical_columns), dtype=torch.long))
    paths = export_model(module.cpu(), example, cfg, ctx, args.out)
    print("wrote " + ", ".join(map(str, paths)) + (f", {args.out / 'tokenizer'}/" if ctx.tokenizer is not None else ""))
    return paths


if __name__ == "__main__":
    main()
