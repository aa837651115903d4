"""Sample order and sharding shared by every loader backend.

Training: one global permutation per (seed, epoch); rank r takes every
world-th sample of it, cut so every rank has the same number of full batches
(drop_last). Evaluation: every sample exactly once overall; ranks are padded
to the same length by repeating their own samples, and the padding is removed
after gathering by de-duplicating on the sample id.

Block order (``block_shuffle``, ``loader.order: block``), for caches larger than memory:
the epoch's draws regrouped by blocks of consecutive positions (consecutive cache
records), blocks in a seeded random order, shuffled only within windows of blocks,
so the loader reads a window of whole blocks instead of one record anywhere.
Sharding, resume and repeats work on it unchanged: it is just another global order.

Semantic batches (``group_epoch_order``): the permutation is laid out in global
batches (batch_size x world consecutive entries: what ``shard_train`` deals out
as step k's micro-batches) that each draw from at most G groups.
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np


def class_weights(labels: np.ndarray, mode: Literal["inverse", "sqrt"]) -> np.ndarray:
    """Per-sample sampling weights from class frequencies."""
    counts = np.bincount(labels)
    per_class = 1.0 / counts.clip(min=1)
    if mode == "sqrt":
        per_class = np.sqrt(per_class)
    w = per_class[labels]
    return w / w.sum()


def served_weights(weights: Optional[np.ndarray], served: np.ndarray, total: int) -> Optional[np.ndarray]:
    """Sampling probabilities over the ``served`` positions of a split of ``total`` rows.

    ``weights`` are one per split row (as ``create_loader`` computes them; rows left out get no
    draws) or already one per served position; either way they are renormalised to sum to 1.
    """
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) == total and len(served) != total:
        weights = weights[served]
    return weights / weights.sum()


def epoch_order(n: int, seed: int, epoch: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Positions 0..n-1 in this epoch's global order (weighted: n draws with replacement)."""
    rng = np.random.default_rng([seed, epoch, 0xDA7A])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights)


def block_shuffle(order: np.ndarray, block_size: int, window: int, seed: int, epoch: int) -> np.ndarray:
    """``order`` (an epoch's draws: positions, repeats allowed) rearranged for reads of whole blocks.

    Block b holds positions [b * block_size, (b + 1) * block_size). The blocks are put in a seeded random order
    and cut into windows of ``window`` blocks; the draws of one window are shuffled among themselves and follow
    the previous window's. Same multiset as ``order`` (every sample once without weights; the same draws with
    them), a pure function of (order, block_size, window, seed, epoch), so every rank computes the same order.
    """
    order = np.asarray(order, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 0xB10C])
    n_blocks = int(order.max()) // block_size + 1 if len(order) else 0
    slot = rng.permutation(n_blocks)[order // block_size]  # each draw's block's place in the block order
    return order[np.lexsort((rng.random(len(order)), slot // window))]


def repeat_counts(order: np.ndarray) -> np.ndarray:
    """For each entry of ``order``, how many times its value appeared before it (0 for a first appearance)."""
    idx = np.argsort(order, kind="stable")
    ordered = order[idx]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    counts = np.empty(len(order), dtype=np.int64)
    counts[idx] = np.arange(len(order)) - first_of_group
    return counts


def train_batches_per_rank(n: int, batch_size: int, world: int) -> int:
    return n // (batch_size * world)


def shard_train(order: np.ndarray, rank: int, world: int, batch_size: int) -> np.ndarray:
    """This rank's positions for one epoch: disjoint across ranks, equal batch counts, drop_last."""
    per_rank = train_batches_per_rank(len(order), batch_size, world) * batch_size
    return order[rank::world][:per_rank]


def eval_per_rank(n: int, world: int) -> int:
    """Positions each rank evaluates: ceil(n/world), the shorter shards padded up to it."""
    return -(-n // world)


def shard_eval(n: int, rank: int, world: int) -> np.ndarray:
    """Contiguous block of positions for this rank, padded (with its own last position) to ceil(n/world)."""
    per_rank = eval_per_rank(n, world)
    start = min(rank * per_rank, n)
    block = np.arange(start, min(start + per_rank, n))
    if len(block) < per_rank:
        fill = block[-1] if len(block) else n - 1
        block = np.concatenate([block, np.full(per_rank - len(block), fill)])
    return block


def group_epoch_order(groups: np.ndarray, groups_per_batch: int, batch_size: int, world: int, seed: int,
                      epoch: int, base: Optional[np.ndarray] = None) -> tuple[np.ndarray, int]:
    """This epoch's global order of positions 0..n-1 (each exactly once) in group-composed global batches.

    ``groups``: int [n], each position's group. A global batch is the ``batch_size * world`` consecutive entries
    that ``shard_train`` deals out as one step's micro-batches; the first ``composed`` of them each hold G =
    ``groups_per_batch`` blocks of m = batch_size * world / G samples of one group, so every rank's micro-batch
    holds batch_size / G samples of each of the same <= G groups (a large group may fill two blocks of one
    batch). Blocks: each group's positions in a seeded random order, cut into blocks of m; blocks shuffled and
    dealt G per batch. Leftovers (the blocks that do not fill a last batch, and each group's last < m
    positions) follow as the tail, group by group in a seeded group order, so tail batches may hold more than G
    groups; as without groups, ``shard_train`` drops the last n mod (batch_size * world) entries, here tail
    ones, which change from epoch to epoch. A pure function of (groups, G, batch_size, world, seed, epoch):
    every rank computes the same order and a resumed run continues it.

    ``base``: a permutation of 0..n-1 (``block_shuffle``'s) that replaces the random one: each group's positions
    follow it, and the blocks are dealt in the order the base order completes them (a block's place is that of
    its last sample), not shuffled, so a global batch holds samples read around the same time.
    """
    groups = np.asarray(groups, dtype=np.int64)
    n, g_count = len(groups), groups_per_batch
    global_bs = batch_size * world
    if batch_size % g_count:
        raise ValueError(f"loader.groups_per_batch={g_count} must divide loader.batch_size={batch_size}")
    m = global_bs // g_count
    rng = np.random.default_rng([seed, epoch, 0x6809])
    perm = rng.permutation(n) if base is None else np.asarray(base, dtype=np.int64)
    by_time = np.argsort(groups[perm], kind="stable")
    by_group = perm[by_time]  # each group's positions, in the random (or base) order
    starts = np.r_[0, np.flatnonzero(np.diff(groups[by_group])) + 1, n] if n else np.zeros(1, np.int64)
    blocks, rest, done_at = [], [], []
    for a, b in zip(starts[:-1], starts[1:]):
        full = (b - a) // m * m
        blocks += [by_group[i : i + m] for i in range(a, a + full, m)]
        done_at += [by_time[i + m - 1] for i in range(a, a + full, m)]  # where the base order completes the block
        rest.append(by_group[a + full : b])
    block_order = rng.permutation(len(blocks)) if base is None else np.argsort(done_at, kind="stable")
    composed = len(blocks) // g_count
    head = [blocks[i] for i in block_order[: composed * g_count]]
    tail = [blocks[i] for i in block_order[composed * g_count :]] + [rest[i] for i in rng.permutation(len(rest))]
    order = np.concatenate(head + tail) if n else np.zeros(0, np.int64)
    return order.astype(np.int64), composed
