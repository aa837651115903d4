"""DALI loaders: ``ShardedLoader``s whose images come out of a DALI pipeline.

Emit ``Batch`` with images float32/float16 (bf16: cast in torch), NCHW, normalised,
already augmented, on the decode device; every other field is gathered from the
split position that travels through the pipeline with its image.

Order and sharding are the ``ShardedLoader``'s, not DALI's shuffle buffer: each
epoch the pipeline is rebuilt with the epoch's global list (every rank's shard
concatenated, equal lengths) and the named reader takes block ``shard_id=rank``
of ``num_shards=world`` without shuffling. So DALI's epoch size (``reader_name``)
equals ``len(loader)`` batches, training drops the last partial batch
(LastBatchPolicy.DROP; shards are already whole batches, so every rank sees the
same count) and evaluation returns a partial last batch (PARTIAL) of a padded,
equal-length shard whose duplicates carry a repeated ``index``.
"""
from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from engine import hardware
from engine.data.batch import Batch
from engine.data.dali import bad_images
from engine.data.dali.pipelines import (READER, DecodeSettings, cache_pipeline, check_supported, file_pipeline,
                                        pipe_kwargs)
from engine.data.context import SplitData
from engine.data.loader_base import ShardedLoader
from engine.data.sampling import served_weights, shard_eval, shard_train
from kernels.config import AugmentConfig

log = logging.getLogger(__name__)


def _iterator(pipe, train: bool, reader_name: Optional[str]):
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    pipe.build()
    policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
    return DALIGenericIterator([pipe], ["images", "positions"], reader_name=reader_name, last_batch_policy=policy,
                               auto_reset=False)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, 0xDA11]).generate_state(1)[0])


class _DaliBase(ShardedLoader):
    """Shared by both DALI loaders: every rank's positions, the pairing check, the Batch assembly."""

    def __init__(self, n: int, *, aug: AugmentConfig, size: int, batch_size: int, train: bool, rank: int, world: int,
                 seed: int, settings: DecodeSettings, num_threads: int, prefetch: int, device_id: Optional[int],
                 out_dtype: Optional[torch.dtype], sample_weights):
        check_supported(aug)
        super().__init__(n, batch_size=batch_size, train=train, rank=rank, world=world, seed=seed,
                         sample_weights=sample_weights)
        self.aug, self.size, self.settings = aug, size, settings
        self.num_threads, self.prefetch, self.device_id, self.out_dtype = num_threads, prefetch, device_id, out_dtype

    def all_rank_positions(self, start_batch: int = 0) -> list[np.ndarray]:
        """Every rank's positions this epoch from ``start_batch`` on (equal lengths by construction)."""
        start = start_batch * self.batch_size
        if self.train:
            order = self.global_order()
            return [shard_train(order, r, self.world, self.batch_size)[start:] for r in range(self.world)]
        return [shard_eval(self.n, r, self.world)[start:] for r in range(self.world)]

    def _pipe_kwargs(self) -> dict:
        return pipe_kwargs(self.batch_size, self.num_threads, self.device_id, _epoch_seed(self.seed, self.epoch, self.rank),
                           self.prefetch)

    def _check_order(self, got: np.ndarray, want: np.ndarray, k: int) -> None:
        if not np.array_equal(got, want):  # cheap guard: the pipeline must serve exactly the sampler's order
            raise RuntimeError(f"DALI batch {k} of rank {self.rank} holds positions {got[:8].tolist()}..., "
                               f"the sampler expected {want[:8].tolist()}...")

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.out_dtype) if self.out_dtype is not None and images.dtype != self.out_dtype else images


class DaliLoader(_DaliBase):
    """``loader.backend: dali``: JPEG files read and decoded by DALI (CPU, or nvJPEG with a GPU)."""

    def __init__(self, data: SplitData, *, aug: AugmentConfig, size: int, batch_size: int, train: bool, rank: int,
                 world: int, seed: int, settings: DecodeSettings, num_threads: int = 2, prefetch: int = 2,
                 device_id: Optional[int] = None, out_dtype: Optional[torch.dtype] = None,
                 on_bad_image: str = "error", rejects_path: Optional[Path] = None, sample_weights=None):
        self.data = data
        self.served = np.arange(len(data))  # split positions this loader serves (all but skipped bad images)
        if on_bad_image == "skip":
            self.served = self._skip_bad(num_threads, rejects_path)
            sample_weights = served_weights(sample_weights, self.served, len(data))
        super().__init__(len(self.served), aug=aug, size=size, batch_size=batch_size, train=train, rank=rank, world=world,
                         seed=seed, settings=settings, num_threads=num_threads, prefetch=prefetch, device_id=device_id,
                         out_dtype=out_dtype, sample_weights=sample_weights)

    def served_positions(self) -> np.ndarray:
        return self.served

    def _skip_bad(self, workers: int, rejects_path: Optional[Path]) -> np.ndarray:
        bad = bad_images.scan(self.data.paths, workers)
        if bad:
            rejects = [{"row": int(self.data.rows[i]), "path": self.data.paths[i], "reason": r} for i, r in sorted(bad.items())]
            where = ""
            if rejects_path is not None:
                bad_images.write_rejects(rejects_path, rejects)
                where = f"; listed in {rejects_path}"
            log.warning("data.on_bad_image=skip: skipping %d undecodable %s images (%s)%s", len(bad), self.data.split,
                        ", ".join(f"row {r['row']}: {r['path']}" for r in rejects[:5]), where)
        return np.setdiff1d(np.arange(len(self.data)), np.fromiter(bad, np.int64, len(bad)))

    def _iter_positions(self, positions: np.ndarray, repeats: np.ndarray) -> Iterator[Batch]:
        if not len(positions):
            return
        bs = self.batch_size
        blocks = self.all_rank_positions(start_batch=(len(self.positions()) - len(positions)) // bs)
        split_pos = self.served[np.concatenate(blocks)]  # the epoch's global list; this rank's block is `rank`
        expected = self.served[positions]
        files = [self.data.paths[p] for p in split_pos]
        pipe = file_pipeline(files, split_pos.tolist(), self.rank, self.world, self.train, self.aug, self.size,
                             self.settings, **self._pipe_kwargs())
        it = _iterator(pipe, self.train, READER)
        k = 0
        while True:
            try:
                out = next(it)[0]
            except StopIteration:
                return
            except RuntimeError as e:  # DALI's error names the operator, not the file: find the file
                raise self._decode_error(expected, k, e) from None
            got = out["positions"].reshape(-1).numpy().astype(np.int64)
            self._check_order(got, expected[k * bs : k * bs + len(got)], k)
            fields = {name: torch.from_numpy(v) for name, v in self.data.fields(got, self.train, self.seed, self.epoch).items()}
            yield Batch(images=self._images(out["images"]), **fields)
            k += 1

    def _decode_error(self, expected: np.ndarray, k: int, err: RuntimeError) -> Exception:
        """The files DALI may have been decoding (this batch and those prefetched after it), re-checked
        with PIL nearest first; a BadImageError naming the culprit, or the original error if none fails."""
        bs = self.batch_size
        near = expected[k * bs : (k + self.prefetch + 2) * bs]
        rest = expected[(k + self.prefetch + 2) * bs :]
        for candidates in (near, rest):
            for p in dict.fromkeys(candidates.tolist()):
                reason = bad_images.check_image(self.data.paths[p])
                if reason is not None:
                    return bad_images.BadImageError(
                        f"DALI could not decode {self.data.paths[p]} (manifest row {int(self.data.rows[p])}, "
                        f"{self.data.split} split): {reason}. Fix or remove the file, or set data.on_bad_image=skip "
                        f"to skip undecodable images")
        return err


class DaliCacheLoader(_DaliBase):
    """``loader.backend: dali_cache``: decode-cache records augmented by DALI operators.

    The cache reader's records reach DALI through ``fn.external_source`` as contiguous
    uint8 [B, S, S, 3] batches with ``no_copy=True``; each batch is kept alive in a ring
    longer than DALI's prefetch queue can hold it. There is no DALI reader here, so the
    epoch ends when the source raises StopIteration (it serves exactly this rank's
    ``ShardedLoader`` positions, whole batches when training, a partial last one in eval).
    """

    def __init__(self, reader, *, aug: AugmentConfig, size: int, batch_size: int, train: bool, rank: int, world: int,
                 seed: int, settings: DecodeSettings, num_threads: int = 2, prefetch: int = 2,
                 device_id: Optional[int] = None, out_dtype: Optional[torch.dtype] = None, sample_weights=None):
        self.reader = reader
        sample_weights = served_weights(sample_weights, reader.good, reader.count)
        super().__init__(len(reader.good), aug=aug, size=size, batch_size=batch_size, train=train, rank=rank, world=world,
                         seed=seed, settings=settings, num_threads=num_threads, prefetch=prefetch, device_id=device_id,
                         out_dtype=out_dtype, sample_weights=sample_weights)

    def served_positions(self) -> np.ndarray:
        return self.reader.good

    @property
    def _encoded(self) -> bool:
        return getattr(self.reader, "storage", "raw") == "jpeg"

    def _source(self, batches: list[np.ndarray]):
        r, keep = self.reader, deque(maxlen=2 * self.prefetch + 2)  # no_copy: hold what DALI may still read
        for records in batches:
            # jpeg records go in encoded and the pipeline decodes them (cache_pipeline(encoded=True))
            images = r.encoded_records(records) if self._encoded else r.pixels(records)  # raw: a copy, [B, S, S, 3]
            pos = records.astype(np.int32).reshape(-1, 1)
            keep.append((images, pos))
            yield images, pos

    def _iter_positions(self, positions: np.ndarray, repeats: np.ndarray) -> Iterator[Batch]:
        if not len(positions):
            return
        bs, r = self.batch_size, self.reader
        records = r.good[positions]  # record i is split position i
        batches = [records[i : i + bs] for i in range(0, len(records), bs)]
        pipe = cache_pipeline(self._source(batches), self.train, self.aug, self.size, self.settings,
                              encoded=self._encoded, **self._pipe_kwargs())
        for k, out in enumerate(_iterator(pipe, self.train, None)):
            got = out[0]["positions"].reshape(-1).numpy().astype(np.int64)
            self._check_order(got, batches[k], k)
            fields = {name: torch.from_numpy(v) for name, v in r.batch_fields(got, self.train, self.seed, self.epoch).items()}
            yield Batch(images=self._images(out[0]["images"]), **fields)


# --- from the run config ----------------------------------------------------------------------

def decode_settings(cfg, info: hardware.DeviceInfo) -> tuple[DecodeSettings, Optional[torch.dtype]]:
    """(settings, torch cast after DALI) for this card: hardware policy plus loader.dali_*."""
    defaults = hardware.dali_decoder_defaults(info)
    hw_load = cfg.loader.dali_hw_decoder_load if cfg.loader.dali_hw_decoder_load is not None else defaults["hw_decoder_load"]
    precision = hardware.choose_precision(info, cfg.train.precision)
    gpu = defaults["device"] == "mixed"
    settings = DecodeSettings(defaults["device"], hw_load, cfg.loader.dali_prealloc_mb, fp16=gpu and precision == "fp16")
    out_dtype = torch.bfloat16 if precision == "bf16" else None  # DALI has no bf16 output
    return settings, out_dtype


def _settings_for_this_process(cfg) -> tuple[DecodeSettings, Optional[int], Optional[torch.dtype]]:
    settings, out_dtype = decode_settings(cfg, hardware.device_info())
    return settings, (torch.cuda.current_device() if settings.device == "mixed" else None), out_dtype


def create_dali_loader(cfg, ctx, split: str, train: bool, rank: int, world: int, weights) -> DaliLoader:
    settings, device_id, out_dtype = _settings_for_this_process(cfg)
    rejects = Path(cfg.run_dir) / f"rejects-dali-{split}.csv" if rank == 0 else None
    return DaliLoader(ctx.split(split), aug=cfg.augment, size=cfg.data.image_size, batch_size=cfg.loader.batch_size_for(train),
                      train=train, rank=rank, world=world, seed=cfg.run.seed, settings=settings,
                      num_threads=cfg.loader.num_workers, prefetch=cfg.loader.prefetch, device_id=device_id,
                      out_dtype=out_dtype, on_bad_image=cfg.data.on_bad_image, rejects_path=rejects, sample_weights=weights)


def create_dali_cache_loader(cfg, ctx, split: str, train: bool, rank: int, world: int, weights) -> DaliCacheLoader:
    from engine.data.cache.reader import open_cache

    settings, device_id, out_dtype = _settings_for_this_process(cfg)
    return DaliCacheLoader(open_cache(cfg, ctx, split), aug=cfg.augment, size=cfg.data.image_size,
                           batch_size=cfg.loader.batch_size_for(train), train=train, rank=rank, world=world,
                           seed=cfg.run.seed, settings=settings, num_threads=cfg.loader.num_workers,
                           prefetch=cfg.loader.prefetch, device_id=device_id, out_dtype=out_dtype, sample_weights=weights)
