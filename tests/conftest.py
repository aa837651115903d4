"""Fixtures shared across test packages: a tiny demo dataset, the tiny text encoder (BERT) and tiny CLIP/SigLIP
checkpoints, made once per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # tools/ are scripts, not a package: tests import them by file name
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_demo_dataset(tmp_path_factory) -> Path:
    """The demo dataset at 32/16/16 samples with thumbnail-sized photos; returns the manifest path."""
    from make_demo_data import make_demo_data

    thumbnails = [(96, 72), (80, 80), (72, 96)]  # decode cost is not what these tests measure
    return make_demo_data(tmp_path_factory.mktemp("tiny_demo"), 32, 16, 16, seed=0, workers=2, sizes=thumbnails)


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory) -> str:
    """The one tiny text encoder of the suite: a 2-layer, 32-wide random BERT (seed 0, no dropout, so a
    train-mode forward is deterministic) with MiniLM's tokenizer, saved like a Hugging Face checkpoint folder
    (loadable by path, no network)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from engine.models.text import resolve_text_encoder

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(resolve_text_encoder("minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _save_tiny_dual_encoder(out: Path, family: str) -> str:
    """A 2-layer, 32-wide CLIP or SigLIP (image 32, patch 8, joint size 16 / 32) with MiniLM's tokenizer, saved
    like a Hugging Face checkpoint folder (config, safetensors, tokenizer, preprocessor_config.json)."""
    import json

    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from engine.models.text import resolve_text_encoder

    tok = AutoTokenizer.from_pretrained(resolve_text_encoder("minilm"))
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        with torch.no_grad():  # SigLIP initialises both at 0; distinct values show that they are loaded
            model.logit_scale.fill_(2.0)
            model.logit_bias.fill_(-5.0)
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std,
                                                               "size": {"height": 32, "width": 32}}))
    return str(out)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """A tiny random CLIP checkpoint folder (both towers, projections 32 -> 16, MiniLM's tokenizer)."""
    return _save_tiny_dual_encoder(tmp_path_factory.mktemp("tiny_clip"), "clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> str:
    """A tiny random SigLIP checkpoint folder (both towers, joint size 32, logit scale 2, bias -5, MiniLM's tokenizer)."""
    return _save_tiny_dual_encoder(tmp_path_factory.mktemp("tiny_siglip"), "siglip")


def aux_losses(model, out, labels, **train):
    """A fusion model's auxiliary terms as a training step computes them, under the model's settings (and ``train``)."""
    from engine.config import Config
    from engine.training.config import TrainConfig
    from engine.training.losses import auxiliary_losses

    return auxiliary_losses(out, labels, Config(model=model.cfg, train=TrainConfig(**train)))


def dual_loss(model, out, model_cfg=None):
    """A dual encoder's (total, parts) as a training step computes them, under ``model_cfg`` (a stage's) or its own."""
    from engine.config import Config
    from engine.training.config import EvalConfig
    from engine.training.losses import training_loss

    return training_loss(model, out, None, Config(model=model_cfg or model.cfg, eval=EvalConfig(metric="val_rsum")))
