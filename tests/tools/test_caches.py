"""tools/caches.py: lists the caches under cache.dir with sizes and origins; prune removes only stale ones
(changed images or manifest, abandoned partial builds), and only with --yes."""
from __future__ import annotations

import os
import time
from pathlib import Path

import yaml
from PIL import Image

from tests.data.conftest import write_dataset


def _recipe(tmp_path: Path, manifest: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"manifest": str(manifest), "numeric_columns": ["age"], "categorical_columns": ["site"]},
        "model": {"text_encoder": None},
        "cache": {"dir": str(tmp_path / "cache"), "stored_size": 32, "chunk_size": 4, "workers": 1,
                  "splits": ["train", "val"]}}))
    return recipe


def test_list_and_prune_through_the_command(tmp_path, capsys):
    import build_cache
    import caches

    def _tool(*args: str) -> str:
        capsys.readouterr()
        assert caches.main(list(args)) == 0
        return capsys.readouterr().out

    manifest = write_dataset(tmp_path / "data")
    recipe = _recipe(tmp_path, manifest)
    build_cache.main(["--config", str(recipe), "--no-progress"])
    build_cache.main(["--config", str(recipe), "--no-progress", "--data.max_train_samples=5", "--cache.splits=[train]"])
    assert "served from" in capsys.readouterr().out  # a subset is no cache of its own
    assert build_cache.main(["--config", str(recipe), "--verify", "--data.max_train_samples=5", "--cache.splits=[train]"]) == 0
    assert "all 24 records match" in capsys.readouterr().out  # --verify checks the cache that serves it
    cache = tmp_path / "cache"
    train, val = (next(cache.glob(f"{s}-*")).name for s in ("train", "val"))

    listing = _tool("list", "--config", str(recipe))
    for name in (train, val):
        line = next(line for line in listing.splitlines() if line.startswith(name))
        assert "  ok  " in line and str(manifest) in line and "32 px crop" in line and "KiB" in line
    assert "2 cache(s)" in listing and "0 stale" in listing

    abandoned = cache / "train-0123456789ab.partial"  # a build killed two days ago
    (abandoned / "chunks").mkdir(parents=True)
    (abandoned / "chunks" / "00000000.json").write_text("{}")
    old = time.time() - 2 * 86400
    for p in (abandoned / "chunks" / "00000000.json", abandoned / "chunks", abandoned):
        os.utime(p, (old, old))
    fresh = cache / "val-ba9876543210.partial"  # one written a minute ago: maybe still running
    fresh.mkdir()
    val_photo = tmp_path / "data" / "img" / "0030.jpg"  # a val row of write_dataset (24 train rows first)
    Image.new("RGB", (64, 64), (0, 200, 0)).save(val_photo)
    os.utime(val_photo, (time.time() + 5, time.time() + 5))

    (cache / val / "origin.json").unlink()  # as a cache built before origins were recorded
    assert "not checked (no origin.json" in next(line for line in _tool("list", "--dir", str(cache)).splitlines() if val in line)
    dry = _tool("prune", "--config", str(recipe))  # judged with the recipe: built from its manifest file
    assert f"would remove {abandoned.name}" in dry and f"would remove {val}" in dry and "image files changed" in dry
    assert train not in dry and fresh.name not in dry and "rerun with --yes" in dry
    assert abandoned.is_dir() and (cache / val).is_dir()  # a dry run removes nothing

    done = _tool("prune", "--config", str(recipe), "--yes")
    assert "removed 2 cache(s)" in done
    assert sorted(p.name for p in cache.iterdir()) == sorted([train, fresh.name])

    manifest.write_text(manifest.read_text().replace("sample 1 ", "sample one "))
    listing = _tool("list", "--config", str(recipe))
    assert f"STALE: {manifest} changed since it was built" in listing and "1 stale" in listing
