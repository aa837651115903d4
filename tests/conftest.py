"""Fixtures shared across test packages: a tiny demo dataset and a tiny text encoder, made once per session."""
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
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved like a Hugging Face checkpoint folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from engine.models.text import resolve_text_encoder

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(resolve_text_encoder("minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
