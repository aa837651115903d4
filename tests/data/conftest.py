"""Tiny datasets written to tmp folders: a manifest plus small JPEGs (and special files on demand)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import load_config
from engine.data.context import DataContext


def write_dataset(root: Path, n_train: int = 24, n_val: int = 8, n_test: int = 4, seed: int = 0, extra: list[dict] | None = None) -> Path:
    """JPEGs of 60-200 px with random aspect ratios; returns the manifest path."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    i = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            w, h = (int(v) for v in rng.integers(60, 200, 2))
            base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
            rel = f"img/{i:04d}.jpg"
            img.save(root / rel, quality=90)
            label = ["cat", "dog", "eel"][i % 3] if split != "train" or i % 4 else "cat"
            rows.append({"image": rel, "text": f"sample {i} {label}", "age": str(20 + i % 50), "site": "ab"[i % 2],
                         "label": label, "split": split})
            i += 1
    rows += extra or []
    path = root / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text", "age", "site", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def make_cfg(manifest: Path, cache_dir: Path, *overrides: str):
    base = [f"--data.manifest={manifest}", f"--cache.dir={cache_dir}", "--data.numeric_columns=[age]",
            "--data.categorical_columns=[site]", "--model.text_encoder=null", "--cache.stored_size=32",
            "--cache.chunk_size=4", "--cache.workers=2", "--loader.batch_size=4", "--loader.num_workers=2", "--loader.backend=cache"]
    return load_config(None, base + list(overrides))


def make_ctx(cfg) -> DataContext:
    return DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


def assert_resumes_exactly(cfg, ctx, epoch: int, after: int) -> dict:
    """A training loader stopped after ``after`` batches of ``epoch`` and resumed from its state serves the rest of
    the epoch batch for batch (indices and pixels) as an uninterrupted one; returns the state it resumed from."""
    from engine.data.loaders import create_loader

    full = create_loader(cfg, ctx, "train", True)
    full.set_epoch(epoch)
    expected = [(b.index.clone(), b.images.clone()) for b in full]
    part = create_loader(cfg, ctx, "train", True)
    part.set_epoch(epoch)
    it = iter(part)
    for _ in range(after):
        next(it)
    state = part.state_dict()
    resumed = create_loader(cfg, ctx, "train", True)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(expected) - after
    for (idx, img), b in zip(expected[after:], rest):
        assert idx.tolist() == b.index.tolist() and bool((img == b.images).all())
    return state
