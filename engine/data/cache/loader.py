"""CacheLoader: batches gathered from the memory-mapped cache by native copies in threads.

Emits ``Batch`` with
  images          uint8 [B, S, S, 3] NHWC, RGB, at the cache's stored size, contiguous
  input_ids       int64 [B, L]      attention_mask int64 [B, L]
  numeric         float32 [B, n]    categorical    int64 [B, k]
  labels          int64 [B]         index          int64 [B] manifest row
  (caption caches, evaluation) captions_ids/captions_mask int64 [B, K, L], caption_count int64 [B]
on ``device`` (CUDA: copied asynchronously from a ring of pinned buffers, each refilled once its copy has
completed; CPU: host tensors the caller may keep as long as it likes: a host buffer goes back to the loader's
pool when the last tensor over it is freed, ``HostBuffers``).

Order, sharding and resume come from ``ShardedLoader``: position p of the
split's *served* samples is record ``good[p]`` (rejected records are skipped).
A batch's gather is one ``np.take`` over the map viewed as [N, stride] bytes;
numpy releases the GIL for it, so ``num_workers`` threads each fill a
different batch in parallel with the training step.
"""
from __future__ import annotations

import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np
import torch

from engine import hardware
from engine.data.batch import Batch
from engine.data.cache.reader import CacheReader
from engine.data.loader_base import ShardedLoader
from engine.data.sampling import served_weights

DROP_PAGES_BYTES = 256 << 20  # with release_pages: unmap touched cache pages after this many bytes gathered


class HostBuffers:
    """The CPU path's batch buffers, uint8 [B, S, S, 3], handed out with their ownership.

    ``take(b)`` returns a fresh ndarray view of a free buffer (or of a new one); whoever holds that view (the
    batch's tensor: ``torch.from_numpy`` keeps its array alive until the tensor's storage is freed) owns the
    buffer, and a ``weakref.finalize`` on the view puts the buffer back on the free list once the view is gone.
    So a batch the caller keeps is never overwritten, and a steady loop reuses a few buffers (no page faults
    of fresh allocations per batch).
    """

    def __init__(self, size: int):
        self.size = size
        self._free: deque[np.ndarray] = deque()  # appended by finalizers (any thread), taken by the iterating one

    def take(self, b: int) -> np.ndarray:
        for _ in range(len(self._free)):
            buf = self._free.popleft()
            if len(buf) == b:
                break
            self._free.append(buf)  # the last, shorter batch's buffer: kept for the next epoch's
        else:
            buf = np.empty((b, self.size, self.size, 3), dtype=np.uint8)
        view = buf.view()
        weakref.finalize(view, self._free.append, buf)
        return view


class CacheLoader(ShardedLoader):
    def __init__(self, reader: CacheReader, *, batch_size: int, train: bool, rank: int, world: int, seed: int,
                 num_workers: int = 2, prefetch: int = 2, pin_memory: bool = True,
                 device: Optional[torch.device | str] = None, sample_weights: Optional[np.ndarray] = None,
                 release_pages: bool = False):
        """``sample_weights``: one per split row (as ``create_loader`` computes them), or per served sample.

        Mapped cache pages are page cache: they count in RSS as file-backed memory but are shared and
        reclaimable, and the loader's own (anonymous) memory stays flat whatever the cache's size.
        ``release_pages`` unmaps them every ``DROP_PAGES_BYTES`` for tools that alarm on file-backed
        RSS, at the price of re-faulting them (about a third of the throughput at 256 px).
        """
        self.reader = reader
        sample_weights = served_weights(sample_weights, reader.good, reader.count)  # rejected rows get no draws
        super().__init__(len(reader.good), batch_size=batch_size, train=train, rank=rank, world=world, seed=seed,
                         sample_weights=sample_weights)
        self.num_workers, self.prefetch = max(1, num_workers), max(1, prefetch)
        self.device = torch.device(device) if device is not None else hardware.default_device()
        self.pin = pin_memory and self.device.type == "cuda"
        self.release_pages = release_pages
        self._since_drop = 0

    def served_positions(self) -> np.ndarray:
        return self.reader.good

    # --- one batch --------------------------------------------------------------------

    def _gather(self, positions: np.ndarray, out: np.ndarray) -> dict[str, np.ndarray]:
        """Fill ``out`` (uint8 [>=B, stride] or [>=B, S*S*3]) with the batch's records; return all fields."""
        r = self.reader
        records = r.good[positions]
        r.gather(records, out)  # raw: one np.take over the map; jpeg: decoded (CacheReader.gather)
        return r.batch_fields(records, self.train, self.seed, self.epoch)

    def _to_batch(self, images: torch.Tensor, fields: dict[str, np.ndarray], non_blocking: bool) -> Batch:
        t = {k: torch.from_numpy(v) for k, v in fields.items()}
        if self.device.type != "cpu":
            t = {k: v.to(self.device, non_blocking=non_blocking) for k, v in t.items()}
        return Batch(images=images, **t)

    # --- the epoch ---------------------------------------------------------------------

    def _iter_positions(self, positions: np.ndarray, repeats: np.ndarray) -> Iterator[Batch]:
        bs, r = self.batch_size, self.reader
        r.check_intact(self.epoch)  # a cache truncated or rebuilt under a running job: a message, not a SIGBUS
        batches = [positions[i : i + bs] for i in range(0, len(positions), bs)]
        depth = self.num_workers + self.prefetch  # batches being gathered or ready
        if self.device.type == "cuda":
            on_gpu = getattr(r.jpeg_decoder, "device", "cpu") == "mixed"  # jpeg records, DALI's nvJPEG
            yield from (self._iter_gpu_decoded(batches) if on_gpu else self._iter_cuda(batches, depth))
            return
        buffers = HostBuffers(r.size)

        def job(pos, images):
            fields = self._gather(pos, images.reshape(len(pos), -1))
            return images, fields

        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="cache-gather") as pool:
            pending = deque(pool.submit(job, p, buffers.take(len(p))) for p in batches[:depth])
            nxt = depth
            try:
                while pending:
                    images, fields = pending.popleft().result()
                    if nxt < len(batches):
                        pending.append(pool.submit(job, batches[nxt], buffers.take(len(batches[nxt]))))
                        nxt += 1
                    self._account(len(images))
                    yield self._to_batch(torch.from_numpy(images), fields, non_blocking=False)
                    del images
            finally:
                for f in pending:
                    f.cancel()

    def _iter_cuda(self, batches: list[np.ndarray], depth: int) -> Iterator[Batch]:
        """Pinned ring of depth+1 buffers; a buffer is refilled only after its copy's event completed."""
        r, bs = self.reader, self.batch_size
        slots = [torch.empty((bs, r.stride), dtype=torch.uint8, pin_memory=self.pin) for _ in range(depth + 1)]
        events: list[Optional[torch.cuda.Event]] = [None] * len(slots)
        stream = torch.cuda.current_stream(self.device)

        def job(i, pos):
            slot = i % len(slots)
            if events[slot] is not None:
                events[slot].synchronize()  # the device copy out of this buffer has finished
            return slot, self._gather(pos, slots[slot].numpy())

        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="cache-gather") as pool:
            pending = deque(pool.submit(job, i, p) for i, p in enumerate(batches[:depth]))
            nxt = depth
            try:
                while pending:
                    slot, fields = pending.popleft().result()
                    b = len(fields["labels"])
                    dev = slots[slot][:b].to(self.device, non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(stream)
                    events[slot] = ev
                    if nxt < len(batches):  # submitted after the event exists, so a reuse waits on it
                        pending.append(pool.submit(job, nxt, batches[nxt]))
                        nxt += 1
                    images = dev[:, : r.record_bytes].reshape(b, r.size, r.size, 3)
                    self._account(b)
                    yield self._to_batch(images.contiguous(), fields, non_blocking=True)
            finally:
                for f in pending:
                    f.cancel()

    def _iter_gpu_decoded(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        """JPEG records decoded by DALI on the GPU into device memory: only their encoded bytes leave the map."""
        r = self.reader
        stream = torch.cuda.current_stream(self.device).cuda_stream
        for pos in batches:
            records = r.good[pos]
            images = r.jpeg_decoder.to_cuda(r.encoded_records(records), stream)
            yield self._to_batch(images, r.batch_fields(records, self.train, self.seed, self.epoch), non_blocking=True)

    def _account(self, b: int) -> None:
        if not self.release_pages:
            return
        self._since_drop += b * self.reader.stride
        if self._since_drop >= DROP_PAGES_BYTES:
            self.reader.drop_pages()
            self._since_drop = 0


def create_cache_loader(cfg, ctx, split: str, train: bool, rank: int, world: int, weights) -> CacheLoader:
    """``loader.backend: cache``; raises CacheError (with the build command) if the cache is missing or stale."""
    from engine.data.cache.reader import open_cache

    from engine.data.cache.decode_jpeg import use_loader_decoder

    reader = open_cache(cfg, ctx, split)
    use_loader_decoder(reader, cfg)  # jpeg records: DALI on a GPU, Pillow on the CPU (cache.decoder)
    return CacheLoader(reader, batch_size=cfg.loader.batch_size_for(train), train=train, rank=rank, world=world,
                       seed=cfg.run.seed, num_workers=cfg.loader.num_workers, prefetch=cfg.loader.prefetch,
                       pin_memory=cfg.loader.pin_memory, sample_weights=weights, release_pages=cfg.loader.release_pages)


__all__ = ["CacheLoader", "create_cache_loader"]
