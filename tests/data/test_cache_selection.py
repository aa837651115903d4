"""A subset or fold of a cache's rows is served from it (engine/data/cache/selection.py): nothing built, the same
pixels and batches as a cache of its own; a changed image or manifest is still refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.data.cache import CacheError, build_cache, open_cache
from engine.data.cache.reader import SelectionReader
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
    from engine.data.cache.writer import seal_cache

    assert "served from" in seal_cache(subset, make_ctx(subset), "train").line()  # a sharded build's seal: nothing to do

    reader = open_cache(subset, make_ctx(subset), "train")
    assert isinstance(reader, SelectionReader) and reader.count == 10
    whole = open_cache(full, make_ctx(full), "train")
    row_of = {int(r): i for i, r in enumerate(whole.fields["rows"])}
    mapped = np.array([row_of[int(row)] for row in reader.fields["rows"]])
    for i in range(reader.count):
        np.testing.assert_array_equal(reader.record(i), whole.record(mapped[i]))
    np.testing.assert_array_equal(reader.pixels(np.arange(10)), whole.pixels(mapped))  # the dali_cache path

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


def test_rejected_images_of_a_selection_follow_on_bad_image(tmp_path):
    from engine.data.cache import CacheBuildError
    from tests.data.conftest import write_dataset
    from tests.data.test_cache import _bad_files

    root = tmp_path / "data"
    write_dataset(root)
    manifest = write_dataset(root, extra=_bad_files(root))
    full = make_cfg(manifest, tmp_path / "cache", "--data.on_bad_image=skip")
    assert len(build_cache(full, make_ctx(full), "train", progress=False).rejected) == 4
    subset = make_cfg(manifest, tmp_path / "cache", "--data.on_bad_image=skip", "--data.max_train_samples=26")
    ctx = make_ctx(subset)
    reader = open_cache(subset, ctx, "train")
    bad = {i for i, p in enumerate(ctx.split("train").paths) if "/bad/" in p and "missing" not in p}
    assert bad and set(reader.good.tolist()) == set(range(26)) - bad  # the cover's rejects stay out
    strict = make_cfg(manifest, tmp_path / "cache", "--data.max_train_samples=26")
    with pytest.raises(CacheBuildError, match=r"undecodable image\(s\) of this selection.*bad/.*on_bad_image=skip"):
        build_cache(strict, make_ctx(strict), "train", progress=False)
    with pytest.raises(CacheError, match=r"undecodable image\(s\) of this selection"):
        open_cache(strict, make_ctx(strict), "train")
