"""Block-shuffled order (loader.order: block): windows of whole blocks of consecutive records, every sample once per
epoch across ranks, seeded per (seed, epoch), resumable mid-epoch, with balanced sampling and semantic batches."""
from __future__ import annotations

import numpy as np
import pytest

from tests.data.conftest import assert_resumes_exactly, make_cfg, make_ctx, write_dataset
from engine.data.cache import build_cache
from engine.data.loaders import create_loader
from engine.data.sampling import block_shuffle, class_weights, epoch_order, group_epoch_order, shard_train

BLOCK = ["--loader.order=block", "--loader.block_size=4", "--loader.shuffle_window=2"]


def _windows(blocks: np.ndarray, window: int) -> list[set[int]]:
    """The order's windows, read off its block ids; fails if a block comes back after its window."""
    spans: list[set[int]] = []
    i = 0
    while i < len(blocks):
        span: set[int] = set()
        while i < len(blocks) and (len(span) < window or blocks[i] in span):
            span.add(int(blocks[i]))
            i += 1
        assert not any(span & s for s in spans), "a block came back after its window"
        spans.append(span)
    return spans


@pytest.mark.parametrize("n,block_size,window", [(103, 8, 3), (64, 4, 1), (50, 64, 4), (7, 1, 7)])
def test_block_order_is_a_permutation_read_window_by_window(n, block_size, window):
    order = block_shuffle(epoch_order(n, 0, 0), block_size, window, seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(n))
    spans = _windows(order // block_size, window)
    assert sum(map(len, spans)) == -(-n // block_size)  # every block, each in one window


def test_block_order_shuffles_within_the_window():
    n, block_size, window = 512, 16, 4
    order = block_shuffle(epoch_order(n, 0, 0), block_size, window, seed=0, epoch=0)
    first = order[: block_size * window]
    assert len(np.unique(first // block_size)) == window
    assert not np.array_equal(first, np.sort(first))  # not the blocks one after the other
    assert not np.array_equal(np.unique(first // block_size), np.arange(window))  # not the first blocks of the cache


def test_block_order_is_seeded_per_epoch():
    def order(seed, epoch):
        return block_shuffle(epoch_order(300, seed, epoch), 8, 4, seed, epoch)

    a = order(0, 0)
    np.testing.assert_array_equal(a, order(0, 0))
    assert not np.array_equal(a, order(0, 1))
    assert not np.array_equal(a, order(1, 0))


def test_weighted_block_order_keeps_the_random_orders_draws():
    labels = np.random.default_rng(0).choice(3, 200, p=[0.8, 0.15, 0.05])
    draws = epoch_order(200, 3, 1, class_weights(labels, "inverse"))
    order = block_shuffle(draws, 8, 2, 3, 1)
    np.testing.assert_array_equal(np.sort(order), np.sort(draws))  # the same samples, repeats included
    assert len(_windows(order // 8, 2)) == -(-len(np.unique(draws // 8)) // 2)


@pytest.mark.parametrize("batch_size,world,g", [(8, 1, 2), (8, 2, 4), (6, 3, 3)])
def test_group_batches_over_a_block_order(batch_size, world, g):
    sizes = [70, 41, 33, 20, 17, 9, 6, 4, 2, 1]
    groups = np.random.default_rng(0).permutation(np.repeat(np.arange(len(sizes)), sizes))
    base = block_shuffle(epoch_order(len(groups), 5, 1), 16, 2, 5, 1)
    order, composed = group_epoch_order(groups, g, batch_size, world, seed=5, epoch=1, base=base)
    assert sorted(order.tolist()) == list(range(len(groups)))
    gbs = batch_size * world
    assert composed >= 1
    for k in range(composed):
        assert len(np.unique(groups[order[k * gbs : (k + 1) * gbs]])) <= g
    # batches follow the base order: a composed batch's samples were read close together
    where = np.argsort(base)
    spans = [np.ptp(where[order[k * gbs : (k + 1) * gbs]]) for k in range(composed)]
    assert np.median(spans) < len(groups) / 2
    again = group_epoch_order(groups, g, batch_size, world, seed=5, epoch=1, base=base)[0]
    np.testing.assert_array_equal(order, again)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("block")
    manifest = write_dataset(root / "data", n_train=48, n_val=4, n_test=0)
    cfg = make_cfg(manifest, root / "cache", "--cache.stored_size=16", *BLOCK)
    ctx = make_ctx(cfg)
    build_cache(cfg, ctx, "train", progress=False)
    return cfg, ctx


def _cfg(built, *extra):
    return make_cfg(built[0].data.manifest, built[0].cache.dir, "--cache.stored_size=16", *extra)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_share_out_the_block_order_once(built, world):
    cfg, ctx = built
    loaders = [create_loader(cfg, ctx, "train", True, r, world) for r in range(world)]
    for epoch in (0, 1):
        per_rank = []
        for loader in loaders:
            loader.set_epoch(epoch)
            per_rank.append([i for b in loader for i in b.index.tolist()])
        assert len({len(p) for p in per_rank}) == 1
        flat = [i for p in per_rank for i in p]
        assert len(flat) == len(set(flat))  # disjoint across ranks, no sample twice
        rows = ctx.split("train").rows
        assert sorted(flat) == sorted(rows.tolist())  # 48 = whole batches of 4 on 1, 2 or 3 ranks: every sample
        served = loaders[0].served_positions()
        order = block_shuffle(epoch_order(len(served), cfg.run.seed, epoch), 4, 2, cfg.run.seed, epoch)
        for r in range(world):  # each rank reads what shard_train deals it from the block order
            assert per_rank[r] == rows[served[shard_train(order, r, world, 4)]].tolist()


def test_block_order_differs_from_random_and_changes_with_epoch(built):
    cfg, ctx = built
    block = create_loader(cfg, ctx, "train", True)
    first = [b.index.tolist() for b in block]
    assert [b.index.tolist() for b in create_loader(cfg, ctx, "train", True)] == first
    assert [b.index.tolist() for b in block] != first  # epoch 1
    assert [b.index.tolist() for b in create_loader(_cfg(built), ctx, "train", True)] != first


@pytest.mark.parametrize("after", [1, 5, 11])
def test_block_order_resumes_mid_epoch(built, after):
    cfg, ctx = built
    assert assert_resumes_exactly(cfg, ctx, epoch=2, after=after)["order"] == "block:4x2"


@pytest.mark.parametrize("other", [[], ["--loader.order=block", "--loader.block_size=8", "--loader.shuffle_window=2"],
                                   ["--loader.order=block", "--loader.block_size=4", "--loader.shuffle_window=3"]],
                         ids=["random", "other-block-size", "other-window"])
def test_mid_epoch_resume_under_another_order_is_refused(built, other):
    from engine.config import ConfigError

    cfg, ctx = built
    part = create_loader(cfg, ctx, "train", True)
    next(iter(part))
    with pytest.raises(ConfigError, match=r"cannot resume mid-epoch .*'order': 'block:4x2'"):
        create_loader(_cfg(built, *other), ctx, "train", True).load_state_dict(part.state_dict())
    at_epoch_end = {**part.state_dict(), "epoch": 1, "batches_done": 0}  # between epochs the order may change
    loader = create_loader(_cfg(built, *other), ctx, "train", True)
    loader.load_state_dict(at_epoch_end)
    assert loader.epoch == 1


def test_state_without_an_order_resumes_a_random_order_run(built):
    cfg, ctx = built
    part = create_loader(_cfg(built), ctx, "train", True)
    next(iter(part))
    old = {k: v for k, v in part.state_dict().items() if k != "order"}  # a state saved before loader.order existed
    resumed = create_loader(_cfg(built), ctx, "train", True)
    resumed.load_state_dict(old)
    assert resumed.batches_done == 1


def test_balanced_sampling_in_block_order(built):
    cfg, ctx = built
    balanced = _cfg(built, *BLOCK, "--loader.balanced_sampling=inverse")
    loader = create_loader(balanced, ctx, "train", True)
    served = loader.served_positions()
    labels = ctx.split("train").labels[served]
    draws = epoch_order(len(served), cfg.run.seed, 0, class_weights(labels, "inverse"))
    got = [i for b in loader for i in b.index.tolist()]
    rows = ctx.split("train").rows
    expected = rows[served[block_shuffle(draws, 4, 2, cfg.run.seed, 0)]].tolist()
    assert got == expected and len(set(got)) < len(got)  # drawn with replacement, laid out in blocks


def test_group_batches_in_block_order_serve_every_sample_once(built):
    cfg, ctx = built
    grouped = _cfg(built, *BLOCK, "--loader.group_column=label", "--loader.groups_per_batch=2")
    for world in (1, 2):
        per_rank = [[b.index.tolist() for b in create_loader(grouped, ctx, "train", True, r, world)] for r in range(world)]
        flat = [i for p in per_rank for b in p for i in b]
        assert len(flat) == len(set(flat))
        label_of = dict(zip(ctx.split("train").rows.tolist(), ctx.split("train").labels.tolist()))
        assert len({label_of[i] for r in range(world) for i in per_rank[r][0]}) <= 2  # step 0's global batch


def test_eval_loaders_ignore_the_order(built):
    cfg, ctx = built
    assert create_loader(cfg, ctx, "train", False).state_dict()["order"] == "random"


@pytest.mark.parametrize("bad,match", [(["--loader.block_size=0"], "block_size"), (["--loader.shuffle_window=-1"],
                                        "shuffle_window"), (["--loader.order=sequential"], "loader.order")])
def test_bad_order_settings_are_refused(built, bad, match):
    from engine.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=match):
        _cfg(built, *bad)
