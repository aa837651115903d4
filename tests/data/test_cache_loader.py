"""The cache loader: sharding across ranks, deterministic order, mid-epoch resume."""
from __future__ import annotations

import numpy as np
import pytest

from tests.data.conftest import assert_resumes_exactly, make_cfg, make_ctx, write_dataset
from engine.data.cache import build_cache
from engine.data.loaders import create_loader


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    manifest = write_dataset(root / "data", n_train=30, n_val=11, n_test=2)
    cfg = make_cfg(manifest, root / "cache", "--cache.stored_size=24")
    ctx = make_ctx(cfg)
    for split in ("train", "val"):
        build_cache(cfg, ctx, split, progress=False)
    return cfg, ctx


def _indices(loader) -> list[list[int]]:
    return [b.index.tolist() for b in loader]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_shards_are_disjoint_with_equal_batch_counts(built, world):
    cfg, ctx = built
    per_rank = [_indices(create_loader(cfg, ctx, "train", True, r, world)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == 30 // (4 * world)
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert set(flat) <= set(ctx.split("train").rows.tolist())


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_shards_cover_every_sample_once(built, world):
    cfg, ctx = built
    per_rank = [_indices(create_loader(cfg, ctx, "val", False, r, world)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    flat = [i for batches in per_rank for b in batches for i in b]
    assert sorted(set(flat)) == sorted(ctx.split("val").rows.tolist())


def test_batches_match_the_cached_records(built):
    cfg, ctx = built
    from engine.data.cache import open_cache

    reader = open_cache(cfg, ctx, "val")
    data = ctx.split("val")
    for b in create_loader(cfg, ctx, "val", False):
        assert b.images.shape[1:] == (24, 24, 3) and b.images.is_contiguous() and b.needs_augment
        for img, row, label, num in zip(b.images, b.index, b.labels, b.numeric):
            p = int(np.flatnonzero(data.rows == int(row))[0])
            np.testing.assert_array_equal(img.numpy(), reader.record(p))
            assert int(label) == data.labels[p] and np.allclose(num.numpy(), data.numeric[p])


def test_order_is_seeded_and_changes_with_epoch(built):
    cfg, ctx = built
    a, b = create_loader(cfg, ctx, "train", True), create_loader(cfg, ctx, "train", True)
    first = _indices(a)
    assert first == _indices(b)
    assert _indices(a) != first  # the loader moved on to epoch 1
    other = make_cfg(cfg.data.manifest, cfg.cache.dir, "--cache.stored_size=24", "--run.seed=1")
    assert _indices(create_loader(other, ctx, "train", True)) != first


def test_mid_epoch_resume_yields_the_remaining_batches(built):
    assert_resumes_exactly(*built, epoch=2, after=3)


def test_mid_epoch_resume_refuses_another_world_size_or_batch_size(built):
    """The batches done mean other samples on another world size or batch size: refused, not replayed/skipped."""
    from engine.config import ConfigError

    cfg, ctx = built
    part = create_loader(cfg, ctx, "train", True, rank=0, world=2)
    next(iter(part))
    state = part.state_dict()
    for other in (create_loader(cfg, ctx, "train", True, rank=0, world=1),
                  create_loader(make_cfg(cfg.data.manifest, cfg.cache.dir, "--cache.stored_size=24", "--loader.batch_size=2"), ctx,
                                "train", True)):
        with pytest.raises(ConfigError, match=r"cannot resume mid-epoch .*'world': 2, 'batch_size': 4"):
            other.load_state_dict(state)
    at_epoch_end = {**state, "epoch": 1, "batches_done": 0}  # between epochs any layout is fine
    single = create_loader(cfg, ctx, "train", True, rank=0, world=1)
    single.load_state_dict(at_epoch_end)
    assert single.epoch == 1 and single.batches_done == 0


def test_released_pages_give_identical_batches(built, monkeypatch):
    """loader.release_pages unmaps pages as it reads; what it serves must not change."""
    import engine.data.cache.loader as cache_loader

    cfg, ctx = built
    monkeypatch.setattr(cache_loader, "DROP_PAGES_BYTES", 1)  # release after every batch
    plain = [b.images.clone() for b in create_loader(cfg, ctx, "train", True)]
    cfg.loader.release_pages = True
    try:
        released = [b.images.clone() for b in create_loader(cfg, ctx, "train", True)]
    finally:
        cfg.loader.release_pages = False
    assert len(plain) == len(released) and all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(plain, released))


@pytest.mark.parametrize("backend", ["cache", "pil"])
def test_repeated_draws_are_augmented_differently(tmp_path, backend):
    """Balanced sampling draws with replacement: a sample's repeats in an epoch get their own augmentation."""
    import torch

    from kernels import Augmenter

    manifest = write_dataset(tmp_path / "data", n_train=40)
    cfg = make_cfg(manifest, tmp_path / "cache", f"--loader.backend={backend}", "--loader.balanced_sampling=inverse",
                   "--loader.num_workers=0", "--data.image_size=16", "--cache.stored_size=24", "--loader.batch_size=8")
    ctx = make_ctx(cfg)
    if backend == "cache":
        from engine.data.cache import build_cache

        build_cache(cfg, ctx, "train", progress=False)
    loader = create_loader(cfg, ctx, "train", True)
    aug = Augmenter(cfg.augment, 16, seed=cfg.run.seed, impl="reference")
    first, repeats = {}, 0
    for batch in loader:
        images = aug.train(batch.images, batch.aug_key, loader.epoch) if batch.needs_augment else batch.images
        for row, key, img in zip(batch.index.tolist(), batch.aug_key.tolist(), images):
            if row in first:
                repeats += 1
                assert key != row and not torch.equal(first[row], img), f"row {row} drawn again, augmented alike"
            else:
                assert key == row  # a first draw keeps the plain key: unweighted runs are unchanged
                first[row] = img
    assert repeats > 0


def test_host_buffers_return_to_the_pool_only_when_their_last_tensor_is_freed():
    """CPU batches the caller keeps are never overwritten; a loop that drops them reuses one buffer."""
    import torch

    from engine.data.cache.loader import HostBuffers

    pool = HostBuffers(4)
    kept = [torch.from_numpy(pool.take(8)) for _ in range(3)]
    assert len({t.data_ptr() for t in kept}) == 3
    first, view = kept[0].data_ptr(), kept[0][1:]  # a view of a batch keeps its buffer owned
    del kept[0]
    owners = set()
    for _ in range(10):
        t = torch.from_numpy(pool.take(8))
        owners.add(t.data_ptr())
        del t
    assert first not in owners and len(owners) == 1
    del view
    assert torch.from_numpy(pool.take(8)).data_ptr() in owners | {first}
