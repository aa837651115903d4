"""A subset or fold of a cache's rows is served from it (engine/data/cache/selection.py): nothing built, the same
pixels and batches as a cache of its own; a changed image or manifest is still refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.data.cache import CacheError, build_cache, open_cache
from engine.data.cache.selection import SelectionReader
from engine.data.loaders import create_loader
from tests.data.conftest import make_cfg, make_ctx


def _folders(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.is_dir()}


def _batches(cfg, split: str, train: bool) -> list:
    return [(b.images.clone(), b.labels.clone(), b.index.clone()) for b in create_loader(cfg, make_ctx(cfg), split, train)]


def test_subset_is_served_from_the_full_cache(dataset, tmp_path):
    full = make_cfg(dataset, tmp_path / "cache")
    build_cache(full, make_ctx(full), "train", progress=False)
    before = _folders(tmp_path / "cache")
    subset = make_cfg(dataset, tmp_path / "cache", "--data.max_train_samples=10", "--run.seed=3")
    summary = build_cache(subset, make_ctx(subset), "train", progress=False)
    assert summary.decoded == 0 and summary.count == 10 and "served from" in summary.line()
    assert _folders(tmp_path / "cache") == before  # nothing built, linked or copied

    reader = open_cache(subset, make_ctx(subset), "train")
    assert isinstance(reader, SelectionReader) and reader.count == 10
    whole = open_cache(full, make_ctx(full), "train")
    row_of = {int(r): i for i, r in enumerate(whole.fields["rows"])}
    for i, row in enumerate(reader.fields["rows"]):
        np.testing.assert_array_equal(reader.record(i), whole.record(row_of[int(row)]))

    own = make_cfg(dataset, tmp_path / "own", "--data.max_train_samples=10", "--run.seed=3")  # a cache of its own
    assert build_cache(own, make_ctx(own), "train", progress=False).decoded == 10
    for served, built in zip(_batches(subset, "train", True), _batches(own, "train", True), strict=True):
        for a, b in zip(served, built):
            assert np.array_equal(a.numpy(), b.numpy())


def test_folds_are_served_from_the_recipe_caches(dataset, tmp_path):
    base = make_cfg(dataset, tmp_path / "cache", "--cache.splits=[train,test]")
    for split in ("train", "test"):
        build_cache(base, make_ctx(base), split, progress=False)
    before = _folders(tmp_path / "cache")
    held = set()
    for f in range(3):
        fold = make_cfg(dataset, tmp_path / "cache", "--data.folds=3", f"--data.fold={f}")
        ctx = make_ctx(fold)
        for split in ("train", "val", "test"):
            assert build_cache(fold, ctx, split, progress=False).decoded == 0
        train, val = ctx.split("train").rows, ctx.split("val").rows
        assert not set(train.tolist()) & set(val.tolist())
        held |= set(val.tolist())
        assert sum(len(b.index) for b in create_loader(fold, ctx, "val", False)) == len(val)
        # the fold's tabular statistics are its own (fitted on its train rows), served with the cover's pixels
        np.testing.assert_array_equal(open_cache(fold, ctx, "train").fields["numeric"], ctx.split("train").numeric)
    assert held == set(make_ctx(base).split("train").rows.tolist())  # every train row held out once
    assert _folders(tmp_path / "cache") == before


def test_a_changed_image_or_manifest_is_not_served(dataset, tmp_path):
    import os

    full = make_cfg(dataset, tmp_path / "cache")
    build_cache(full, make_ctx(full), "train", progress=False)
    subset = make_cfg(dataset, tmp_path / "cache", "--data.max_train_samples=6")
    victim = Path(make_ctx(subset).split("train").paths[0])
    from PIL import Image

    Image.new("RGB", (90, 70), (250, 0, 0)).save(victim, quality=95)
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(CacheError, match=rf"stale pixels: image files changed.*{victim.name}.*build_cache\.py"):
        open_cache(subset, make_ctx(subset), "train")
    rebuilt = build_cache(subset, make_ctx(subset), "train", progress=False)
    assert rebuilt.decoded == 6  # decoded again, as a stale cache is
    reader = open_cache(subset, make_ctx(subset), "train")
    assert not isinstance(reader, SelectionReader) and reader.record(0)[..., 0].mean() > 200  # the new red photo

    dataset.write_text(dataset.read_text().replace("sample 1 ", "sample one "))  # another manifest version
    other = make_cfg(dataset, tmp_path / "cache", "--data.max_train_samples=5")
    with pytest.raises(CacheError, match="manifest changed"):
        open_cache(other, make_ctx(other), "train")
