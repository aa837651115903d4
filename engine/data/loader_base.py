"""What every loader backend shares: sharded, seeded order and a resumable position."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Optional

import numpy as np
import torch

from engine.data.batch import Batch
from engine.data.sampling import (block_shuffle, epoch_order, eval_per_rank, group_epoch_order, repeat_counts, shard_eval,
                                  shard_train, train_batches_per_rank)


class ShardedLoader:
    """Iterates this rank's batches of one epoch; subclasses turn positions into Batches.

    Contract: ``len(loader)`` batches per epoch, equal on every rank; train order
    from one global permutation per (seed, epoch); evaluation covers every sample
    exactly once overall (padding duplicates carry a repeated ``index``, removed
    after gathering). ``state_dict()`` records the position so a resumed run sees
    exactly the batches an uninterrupted run would have.
    """

    def __init__(self, n: int, *, batch_size: int, train: bool, rank: int, world: int, seed: int,
                 sample_weights: Optional[np.ndarray] = None):
        if train and n < batch_size * world:
            from engine.config import ConfigError

            raise ConfigError(f"loader.batch_size={batch_size}: {n} training samples cannot fill one batch of {batch_size} "
                              f"on each of {world} ranks; lower loader.batch_size")
        self.n, self.batch_size, self.train = n, batch_size, train
        self.rank, self.world, self.seed = rank, world, seed
        self.sample_weights = sample_weights
        self.sample_groups: Optional[np.ndarray] = None  # int64 [n] per served position (group_batches)
        self.groups_per_batch = 0
        self.blocks: Optional[tuple[int, int]] = None  # (block_size, shuffle_window) in block order (block_order)
        self.epoch = 0
        self.batches_done = 0  # within the current epoch

    def served_positions(self) -> np.ndarray:
        """The split positions this loader serves, in the order of its positions 0..n-1 (backends that leave
        bad images out serve fewer)."""
        return np.arange(self.n)

    def group_batches(self, groups: np.ndarray, groups_per_batch: int) -> None:
        """Train in group-composed batches (``sampling.group_epoch_order``); ``groups``: int [split rows]
        (one per split position, as ``DataContext.group_ids`` gives them) or one per served position."""
        if not self.train:
            return
        groups = np.asarray(groups, dtype=np.int64)
        self.sample_groups = groups[self.served_positions()] if len(groups) != self.n else groups
        self.groups_per_batch = groups_per_batch

    def block_order(self, block_size: int, shuffle_window: int) -> None:
        """Train in block-shuffled order (``sampling.block_shuffle``): windows of whole blocks of consecutive
        positions, for caches larger than memory."""
        if self.train:
            self.blocks = (block_size, shuffle_window)

    def global_order(self) -> np.ndarray:
        """The current training epoch's order of all positions, before sharding (identical on every rank)."""
        base = None
        if self.blocks is not None:
            base = block_shuffle(epoch_order(self.n, self.seed, self.epoch, self.sample_weights), *self.blocks,
                                 self.seed, self.epoch)
        if self.sample_groups is not None:
            return group_epoch_order(self.sample_groups, self.groups_per_batch, self.batch_size, self.world,
                                     self.seed, self.epoch, base)[0]
        return base if base is not None else epoch_order(self.n, self.seed, self.epoch, self.sample_weights)

    def positions(self) -> np.ndarray:
        """This rank's sample positions for the current epoch, in order."""
        return self._draws()[0]

    def _draws(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's positions for the current epoch and, for each, how often the global order drew it before
        (non-zero only for training drawn with replacement): what tells a repeat's augmentation from the first."""
        if self.train:
            order = self.global_order()
            repeats = repeat_counts(order) if self.sample_weights is not None else np.zeros(len(order), np.int64)
            return (shard_train(order, self.rank, self.world, self.batch_size),
                    shard_train(repeats, self.rank, self.world, self.batch_size))
        positions = shard_eval(self.n, self.rank, self.world)
        return positions, np.zeros(len(positions), np.int64)

    def __len__(self) -> int:
        # from the sizes alone: positions() would draw the whole epoch's permutation just to count it
        if self.train:
            return train_batches_per_rank(self.n, self.batch_size, self.world)
        return -(-eval_per_rank(self.n, self.world) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def __iter__(self) -> Iterator[Batch]:
        bs, start = self.batch_size, self.batches_done
        positions, repeats = (a[start * bs :] for a in self._draws())
        for k, batch in enumerate(self._iter_positions(positions, repeats)):
            if repeats.any():
                keys = batch.index + (torch.from_numpy(repeats[k * bs : k * bs + batch.size]) << 40)
                batch = replace(batch, aug_key=keys)
            self.batches_done += 1
            yield batch
        if self.train:  # a finished epoch leaves the loader ready for the next one
            self.epoch, self.batches_done = self.epoch + 1, 0
        else:
            self.batches_done = 0

    def _iter_positions(self, positions: np.ndarray, repeats: np.ndarray) -> Iterator[Batch]:
        """Batches of ``positions`` in order (whole batches in training); ``repeats`` (see ``_draws``) is for
        backends that augment on the host, per sample."""
        raise NotImplementedError

    def _order_name(self) -> str:
        return "random" if self.blocks is None else "block:{}x{}".format(*self.blocks)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "world": self.world,
                "batch_size": self.batch_size, "n": self.n, "groups_per_batch": self.groups_per_batch,
                "order": self._order_name()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position. Mid-epoch, the batches done only mean the same samples under the same world
        size, batch size, sample count, group composition and order (random, or block:SIZExWINDOW): anything else would
        replay or skip samples, so it is refused."""
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        # groups_per_batch: 0 without semantic batches; states saved before it or order existed do not carry them
        now = {"world": self.world, "batch_size": self.batch_size, "n": self.n, "groups_per_batch": self.groups_per_batch,
               "order": self._order_name()}
        saved = {k: state[k] for k in now if k in state}
        if done and saved and saved != {k: now[k] for k in saved}:
            from engine.config import ConfigError

            raise ConfigError(f"cannot resume mid-epoch (epoch {epoch + 1}, after {done} batches per rank): the run was "
                              f"saved with {saved} and now has {now}, so the rest of the epoch would replay or skip "
                              "samples. Resume with the original world size, loader.batch_size and loader.order settings, "
                              "or from a checkpoint taken at the end of an epoch")
        self.epoch, self.batches_done = epoch, done
