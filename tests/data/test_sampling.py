"""Semantic batches (loader.group_column): every sample once per epoch, each global batch from at most G groups,
each rank's micro-batch B/G samples of each, seeded per (seed, epoch), resumable."""
from __future__ import annotations

import numpy as np
import pytest

from tests.data.conftest import make_cfg, make_ctx, write_dataset
from engine.data.cache import build_cache
from engine.data.loaders import create_loader
from engine.data.sampling import group_epoch_order, shard_train


def _groups(n: int = 203, seed: int = 0) -> np.ndarray:
    """Skewed group sizes: a big group, mid ones, and groups smaller than one block."""
    sizes = [70, 41, 33, 20, 17, 9, 6, 4, 2, 1]
    g = np.repeat(np.arange(len(sizes)), sizes)[:n]
    return np.random.default_rng(seed).permutation(g)


@pytest.mark.parametrize("batch_size,world,g", [(8, 1, 2), (8, 2, 4), (6, 3, 3), (4, 2, 1)])
def test_every_sample_once_and_composed_batches_hold_at_most_g_groups(batch_size, world, g):
    groups = _groups()
    order, composed = group_epoch_order(groups, g, batch_size, world, seed=5, epoch=1)
    assert sorted(order.tolist()) == list(range(len(groups)))  # a permutation: every sample exactly once
    gbs = batch_size * world
    assert composed >= 1
    for k in range(composed):
        batch = order[k * gbs : (k + 1) * gbs]
        assert len(np.unique(groups[batch])) <= g
        for rank in range(world):  # what shard_train deals this rank at step k: B/G per block
            micro = shard_train(order, rank, world, batch_size)[k * batch_size : (k + 1) * batch_size]
            assert set(micro.tolist()) <= set(batch.tolist()) and len(micro) == batch_size
            _, per_group = np.unique(groups[micro], return_counts=True)
            assert (per_group % (batch_size // g) == 0).all()
    # the tail: at most the leftover blocks (< G) and each group's last < m samples
    m = gbs // g
    assert len(order) - composed * gbs < g * m + len(np.unique(groups)) * m


def test_group_order_is_seeded_per_epoch():
    groups = _groups()
    a = group_epoch_order(groups, 2, 8, 2, seed=0, epoch=0)[0]
    np.testing.assert_array_equal(a, group_epoch_order(groups, 2, 8, 2, seed=0, epoch=0)[0])
    assert not np.array_equal(a, group_epoch_order(groups, 2, 8, 2, seed=0, epoch=1)[0])
    assert not np.array_equal(a, group_epoch_order(groups, 2, 8, 2, seed=1, epoch=0)[0])


def test_group_order_refuses_a_g_that_does_not_divide_the_batch():
    with pytest.raises(ValueError, match="groups_per_batch=3 must divide loader.batch_size=8"):
        group_epoch_order(_groups(), 3, 8, 1, 0, 0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    manifest = write_dataset(root / "data", n_train=40, n_val=4, n_test=0)
    cfg = make_cfg(manifest, root / "cache", "--cache.stored_size=16", "--loader.group_column=label",
                   "--loader.groups_per_batch=2")
    ctx = make_ctx(cfg)
    build_cache(cfg, ctx, "train", progress=False)
    return cfg, ctx


@pytest.mark.parametrize("world", [1, 2])
def test_cache_loader_serves_group_batches_on_every_rank(built, world):
    cfg, ctx = built
    data = ctx.split("train")
    label_of = dict(zip(data.rows.tolist(), data.labels.tolist()))
    loaders = [create_loader(cfg, ctx, "train", True, r, world) for r in range(world)]
    per_rank = [[b.index.tolist() for b in loader] for loader in loaders]
    assert len({len(p) for p in per_rank}) == 1
    order, composed = group_epoch_order(data.labels, 2, 4, world, cfg.run.seed, 0)
    flat = [i for p in per_rank for b in p for i in b]
    assert len(flat) == len(set(flat))  # no sample twice in an epoch
    for k in range(min(composed, len(per_rank[0]))):
        step = [label_of[i] for rank in range(world) for i in per_rank[rank][k]]
        assert len(set(step)) <= 2  # the global batch of step k
        for rank in range(world):
            assert all(c % 2 == 0 for c in np.unique([label_of[i] for i in per_rank[rank][k]], return_counts=True)[1])


def test_group_batches_resume_mid_epoch(built):
    cfg, ctx = built
    full = create_loader(cfg, ctx, "train", True)
    full.set_epoch(3)
    expected = [b.index.tolist() for b in full]
    part = create_loader(cfg, ctx, "train", True)
    part.set_epoch(3)
    it = iter(part)
    next(it), next(it)
    resumed = create_loader(cfg, ctx, "train", True)
    resumed.load_state_dict(part.state_dict())
    assert [b.index.tolist() for b in resumed] == expected[2:]


def test_group_sampling_with_balanced_sampling_is_refused(built):
    cfg, _ = built
    from engine.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="cannot be combined with loader.balanced_sampling"):
        make_cfg(cfg.data.manifest, cfg.cache.dir, "--loader.group_column=label", "--loader.groups_per_batch=2",
                 "--loader.balanced_sampling=sqrt")


def test_group_column_may_be_any_manifest_column(built):
    cfg, ctx = built
    site = make_cfg(cfg.data.manifest, cfg.cache.dir, "--cache.stored_size=16", "--loader.group_column=site",
                    "--loader.groups_per_batch=1")
    data = ctx.split("train")
    site_of = {int(r): ctx.manifest.rows[int(r)]["site"] for r in data.rows}
    batches = [b.index.tolist() for b in create_loader(site, ctx, "train", True)]
    assert all(len({site_of[i] for i in b}) == 1 for b in batches[:8])  # 20 per site: 5 single-site batches each
    with pytest.raises(Exception, match="group_column='nope' is not a column"):
        bad = make_cfg(cfg.data.manifest, cfg.cache.dir, "--cache.stored_size=16", "--loader.group_column=nope",
                       "--loader.groups_per_batch=1")
        create_loader(bad, ctx, "train", True)


def test_mid_epoch_resume_with_other_group_settings_is_refused(built):
    cfg, ctx = built
    from engine.config import ConfigError

    part = create_loader(cfg, ctx, "train", True)
    next(iter(part))
    plain = make_cfg(cfg.data.manifest, cfg.cache.dir, "--cache.stored_size=16")
    with pytest.raises(ConfigError, match="cannot resume mid-epoch"):
        create_loader(plain, ctx, "train", True).load_state_dict(part.state_dict())
