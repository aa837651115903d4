"""The cache writer: decode a split once, in parallel, resumably, into the format of ``format.py``.

Build protocol (safe against a kill at any moment, SIGKILL included):

1. everything is written under ``<name>.partial/``; ``key.json`` there pins the
   key, the chunk size and the decoder (cache.decoder) the build was started with;
2. ``images.u8`` is created at its final size; pool workers decode chunks of
   ``chunk_size`` records and write them straight at their offsets, flush
   them, then atomically write ``chunks/<k>.json`` (checksums + rejects of
   the chunk) -- the chunk's done flag;
3. a rerun skips the chunks that have a done flag and redoes the others
   (decoding is deterministic, so redone records are byte-identical);
4. when every chunk is done: verify every record against its checksum, write
   the per-record fields, ``rejects.csv``, ``good.npy``, ``metadata.json``,
   drop the progress files and ``os.rename`` the folder to its final name.

A folder without the ``.partial`` suffix is therefore always complete.

Sharded builds (``shards.py``): ``build_cache(..., shard=Shard(I, N))`` takes the build lock only to set up the
partial and claim its shard, then decodes its chunk range beside the other shards' builders and stops before
step 4; ``seal_cache`` does step 4 once every shard is done. A plain build claims every shard (waiting for a
running one) and seals. With ``cache.storage: jpeg`` a chunk's records are encoded (``decode_jpeg.py``) into
``chunks/<k>.jpg`` before its done flag, and step 4 concatenates them into ``images.jpg`` + ``offsets.npy``.

When a finished cache of the same split has the same pixel key (``format.PIXEL_KEY``),
steps 2-4's decoding is skipped: its ``images.u8`` is hard-linked (copied where
links are impossible) into ``<name>.partial/`` with its checksums and rejects, and
only the per-record fields are written. No key file is written there, so an
interrupted reuse is never mistaken for a resumable decode (which writes into
``images.u8``).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

import numpy as np

from engine.data.cache import format as fmt
from engine.data.cache import selection as sel
from engine.data.cache import shards as sh
from engine.data.cache.decode_dali import chunk_decoder, decoder_tag

DELAY_ENV = "ENGINE_CACHE_CHUNK_DELAY"  # test hook: seconds to sleep after each chunk (lets a kill land mid-build)


@dataclass
class BuildSummary:
    split: str
    folder: Path
    count: int  # records (= split rows)
    good: int  # records the reader serves
    rejected: list[dict] = field(default_factory=list)  # {record, row, path, reason}
    seconds: float = 0.0
    decoded: int = 0  # records decoded by this call (0 when the cache was up to date)
    up_to_date: bool = False
    pixels_from: Optional[Path] = None  # the cache whose images.u8 this one reuses
    shard: Optional[sh.Shard] = None  # set when this call built one shard (not sealed: seal_cache finishes it)
    records: tuple[int, int] = (0, 0)  # the shard's record range [start, stop)

    def line(self) -> str:
        if self.shard is not None and not self.up_to_date and self.pixels_from is None:
            rate = self.decoded / self.seconds if self.seconds else 0.0
            return (f"{self.split}: shard {self.shard} (records {self.records[0]}-{self.records[1] - 1}) done, "
                    f"{len(self.rejected)} rejected, {self.decoded} decoded in {self.seconds:.1f}s ({rate:.0f} img/s) "
                    f"in {self.folder}; seal it with --seal once every shard is done")
        if self.up_to_date:
            return f"{self.split}: up to date, {self.good}/{self.count} records in {self.folder}"
        if self.pixels_from is not None:
            return (f"{self.split}: {self.good}/{self.count} records, pixels reused from {self.pixels_from.name} "
                    f"(nothing decoded), fields written in {self.seconds:.1f}s -> {self.folder}")
        rate = self.decoded / self.seconds if self.seconds else 0.0
        return (f"{self.split}: {self.good}/{self.count} records, {len(self.rejected)} rejected"
                f"{' (see ' + str(self.folder / fmt.REJECTS) + ')' if self.rejected else ''}, "
                f"{self.decoded} decoded in {self.seconds:.1f}s ({rate:.0f} img/s) -> {self.folder}")


# --- pool workers -------------------------------------------------------------------------

_W: dict = {}


def _init_worker(images: str, n: int, size: int, policy: str, draft: bool, chunks: str, on_bad: str,
                 decoder: dict, threads: int, jpeg_quality: int = 0) -> None:
    stride = fmt.record_stride(size)
    mm, view = fmt.open_records(Path(images), n, stride, writable=True) if not jpeg_quality else (None, None)
    _W.update(mm=mm, view=view, size=size, stride=stride, policy=policy, draft=draft, chunks=Path(chunks), on_bad=on_bad,
              decode=chunk_decoder(decoder, size, policy, draft, threads), jpeg_quality=jpeg_quality)


def _build_chunk(job: tuple[int, int, list[str]]) -> tuple[int, int, list[dict]]:
    """Decode records [start, start+len(paths)) into the map; write the done flag unless it must stop."""
    k, start, paths = job
    view, size, payload = _W["view"], _W["size"], fmt.record_bytes(_W["size"])
    sums, rejects = [], []
    images = _W["decode"](paths)  # an array or the exception per path: Pillow file by file, or DALI (cache.decoder)
    if _W["jpeg_quality"]:
        return _encode_chunk(k, start, paths, images)
    for i, path in enumerate(paths):
        rec = start + i
        try:
            img = images[i]
            if isinstance(img, Exception):
                raise img
            view[rec, :payload] = img.reshape(-1)
        except Exception as e:  # noqa: BLE001 -- any decode failure is a bad image, reported with its reason
            view[rec, :payload] = 0
            rejects.append({"record": rec, "path": path, "reason": f"{type(e).__name__}: {e}".replace("\n", " ")})
        sums.append(fmt.checksum(view[rec, :payload]))
    _W["mm"].flush(start * _W["stride"], len(paths) * _W["stride"])
    return _chunk_done(k, start, len(paths), {"start": start, "checksums": sums, "rejects": rejects})


def _encode_chunk(k: int, start: int, paths: list[str], images: list) -> tuple[int, int, list[dict]]:
    """storage jpeg: the chunk's records as JPEGs, back to back in chunks/<k>.jpg (a rejected record is empty)."""
    from engine.data.cache.decode_jpeg import encode_record

    blobs, rejects = [], []
    for i, path in enumerate(paths):
        try:
            if isinstance(images[i], Exception):
                raise images[i]
            blobs.append(encode_record(images[i], _W["jpeg_quality"]))
        except Exception as e:  # noqa: BLE001 -- as in _build_chunk: a bad image, with its reason
            blobs.append(b"")
            rejects.append({"record": start + i, "path": path, "reason": f"{type(e).__name__}: {e}".replace("\n", " ")})
    if not (rejects and _W["on_bad"] == "error"):
        _atomic_write(_W["chunks"] / f"{k:08d}.jpg", b"".join(blobs))  # before the done flag that points at it
    return _chunk_done(k, start, len(paths), {"start": start, "checksums": [fmt.checksum(b) for b in blobs],
                                              "sizes": [len(b) for b in blobs], "rejects": rejects})


def _chunk_done(k: int, start: int, count: int, flag: dict) -> tuple[int, int, list[dict]]:
    """Write chunk ``k``'s done flag (its checksums, rejects and, for jpeg, record sizes) once its records are down."""
    if flag["rejects"] and _W["on_bad"] == "error":
        return k, count, flag["rejects"]  # no done flag: fixing the file and rerunning redoes this chunk
    _atomic_write(_W["chunks"] / f"{k:08d}.json", json.dumps(flag))
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    return k, count, flag["rejects"]


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- the build ------------------------------------------------------------------------------


def build_cache(cfg, ctx, split: str, workers: Optional[int] = None, progress: bool = True,
                shard: Optional[sh.Shard] = None) -> BuildSummary:
    """Build (or finish, or confirm) the cache of ``split`` for run config ``cfg``; see the module doc. With
    ``shard``, build only that shard's records (beside the other shards' builders) and leave the seal to
    ``seal_cache``."""
    from engine.data.cache.lock import build_lock

    key = fmt.cache_key(cfg, ctx, split)
    final = fmt.cache_dir(cfg, key)
    served = _served(cfg, ctx, split, key, final)
    if served is not None:
        return served
    t0 = time.perf_counter()
    with build_lock(final):  # a second builder of this cache waits, told who holds it; a shard holds it to set up
        done = _existing(cfg, ctx, split, key, final)
        if done is not None:
            return done
        plan = _plan(cfg, ctx, split, key, final, shard)
        if isinstance(plan, BuildSummary):  # pixels reused: sealed already
            plan.seconds = time.perf_counter() - t0
            return plan
        if shard is None:  # every shard, waiting for any being built, then the seal: under the build lock throughout
            claims = sh.take_all(plan.partial, plan.shards, wait=True)
            try:
                decoded = _decode(plan, range(plan.n_chunks), cfg, split, workers, progress)
            finally:
                sh.release(claims)  # no shard can be claimed again before the seal: that needs the build lock
            summary = _finish(plan.partial, final, key, plan.data, cfg.cache.stored_size, plan.n_chunks,
                              plan.fingerprint, plan.storage)
            summary.seconds, summary.decoded = time.perf_counter() - t0, decoded
            return summary
        claim = sh.ShardClaim.take(plan.partial, shard)  # before the build lock goes: nobody wipes the partial now
    try:
        chunks = shard.chunks(plan.n_chunks)
        decoded = _decode(plan, chunks, cfg, split, workers, progress)
    finally:
        claim.release()
    records = (chunks.start * plan.chunk_size, min(chunks.stop * plan.chunk_size, len(plan.data)))
    rejected = [r for k in chunks for r in _chunk_flag(plan.partial, k)["rejects"]]
    return BuildSummary(split, plan.partial, records[1] - records[0], records[1] - records[0] - len(rejected), rejected,
                        time.perf_counter() - t0, decoded, shard=shard, records=records)


def _served(cfg, ctx, split: str, key: fmt.CacheKey, final: Path) -> Optional[BuildSummary]:
    """A subset or fold of a finished cache that holds its rows (``selection.py``): its summary, nothing to build."""
    if (final / fmt.METADATA).is_file():
        return None
    return build_from_cover(cfg, ctx, split, key)


def build_from_cover(cfg, ctx, split: str, key: fmt.CacheKey):
    """What ``build_cache`` returns when a fresh cover serves ``split`` (nothing to build), else None."""
    cover = sel.find_cover(cfg, ctx, split, key)
    if cover is None or cover.changed:
        return None
    rejected = sel.refuse_rejects(cover, cfg, fmt.build_command(cfg, split), fmt.CacheBuildError)
    return ServedSummary(split, cover.folder, len(cover.records), len(cover.records) - len(rejected), rejected,
                         up_to_date=True)


class ServedSummary(BuildSummary):
    """A selection served from ``folder``, its cover."""

    def line(self) -> str:
        return f"{self.split}: {self.good}/{self.count} records served from {self.folder} (it holds them): nothing to build"


def seal_cache(cfg, ctx, split: str) -> BuildSummary:
    """Finish a sharded build: refuse naming every shard still being built, unfinished or not started; else
    verify every record and seal the folder as a single-process build does (``shards.py``)."""
    from engine.data.cache.lock import build_lock

    key = fmt.cache_key(cfg, ctx, split)
    final = fmt.cache_dir(cfg, key)
    served = _served(cfg, ctx, split, key, final)  # its shards' builds were served too: nothing to seal
    if served is not None:
        return served
    t0 = time.perf_counter()
    with build_lock(final):
        done = _existing(cfg, ctx, split, key, final)
        if done is not None:
            return done
        partial = final.with_name(final.name + fmt.PARTIAL_SUFFIX)
        build = fmt.build_command(cfg, split)
        if not (partial / fmt.KEY_FILE).is_file():
            raise fmt.CacheError(f"nothing to seal: no build of the {split} cache has started (expected {partial}); "
                                 f"build it with: {build} --shard I/N for each shard I of N, or all at once: {build}")
        pinned = json.loads((partial / fmt.KEY_FILE).read_text())
        count, chunk_size = int(pinned.get("shards", 1)), int(pinned["chunk_size"])
        held = sh.held_shards(partial, count)
        if held:
            raise fmt.CacheError(f"cannot seal {partial}: shard(s) {', '.join(held)} still being built; seal when they end")
        data = ctx.split(split)
        n_chunks = -(-len(data) // chunk_size)
        missing = sh.unfinished_report(_done_chunks(partial), n_chunks, count, build)
        if missing:
            raise fmt.CacheError(f"cannot seal {partial}: {missing}")
        # no shard is held, and none can be claimed while this holds the build lock: nobody writes records now
        summary = _finish(partial, final, key, data, cfg.cache.stored_size, n_chunks,
                          fmt.images_fingerprint(data.paths), fmt.key_storage(key.to_dict()))
    summary.seconds = time.perf_counter() - t0
    return summary


def _existing(cfg, ctx, split: str, key: fmt.CacheKey, final: Path) -> Optional[BuildSummary]:
    """The summary of a finished, current cache at ``final``; None when it must be built (a stale one is deleted)."""
    if not (final / fmt.METADATA).is_file():
        return None
    meta = json.loads((final / fmt.METADATA).read_text())
    if meta.get("key") == key.to_dict() and _drop_if_stale(final, meta, ctx.split(split).paths):
        return None  # its image files changed since it was built: decoded again
    if meta.get("key") == key.to_dict():
        fmt.refuse_rejects_in_error_mode(final, meta, cfg.data.on_bad_image, fmt.build_command(cfg, split), fmt.CacheBuildError)
        return BuildSummary(split, final, meta["count"], meta["good"], up_to_date=True)
    raise fmt.CacheError(f"{final} exists but was built for other settings; delete it and run: "
                         f"{fmt.build_command(cfg, split)}")


@dataclass
class _Plan:
    """A decode build's partial folder and what its progress files pin."""

    partial: Path
    data: object  # SplitData
    fingerprint: str
    decoder: dict
    chunk_size: int
    n_chunks: int
    shards: int  # the shard count the partial is pinned to (1: not sharded)
    storage: str


def _plan(cfg, ctx, split: str, key: fmt.CacheKey, final: Path, shard: Optional[sh.Shard]):
    """Under the build lock: a ``_Plan`` over a created or reopened partial, or the summary of a pixel reuse."""
    data = ctx.split(split)
    n, size = len(data), cfg.cache.stored_size
    partial = final.with_name(final.name + fmt.PARTIAL_SUFFIX)
    fingerprint = fmt.images_fingerprint(data.paths)
    source = find_pixel_source(Path(cfg.cache.dir), key, fingerprint)
    if source is not None:
        return _reuse_pixels(source, partial, final, key, data, size, cfg, fingerprint)
    from engine import hardware

    decoder = hardware.choose_cache_decoder(hardware.device_info(), cfg.cache.decoder)
    storage = fmt.key_storage(key.to_dict())
    chunk_size = _prepare_partial(partial, key, n, fmt.record_stride(size), cfg.cache.chunk_size,
                                  decoder_tag(decoder), shard, storage)
    shards = int(json.loads((partial / fmt.KEY_FILE).read_text()).get("shards", 1))
    return _Plan(partial, data, fingerprint, decoder, chunk_size, -(-n // chunk_size), shards, storage)


def _decode(plan: _Plan, chunks: range, cfg, split: str, workers: Optional[int], progress: bool) -> int:
    """Decode the chunks of ``chunks`` that have no done flag; returns the records decoded."""
    done, paths = _done_chunks(plan.partial), plan.data.paths
    cs, n = plan.chunk_size, len(plan.data)
    jobs = [(k, k * cs, paths[k * cs : (k + 1) * cs]) for k in chunks if k not in done]
    total = min(chunks.stop * cs, n) - min(chunks.start * cs, n)
    return _run_jobs(jobs, plan.partial, n, cfg, split, plan.data, workers, progress,
                     total - sum(len(j[2]) for j in jobs), plan.decoder, total)


def _done_chunks(partial: Path) -> set[int]:
    return {int(p.stem) for p in (partial / fmt.CHUNKS).glob("*.json")}


def _chunk_flag(partial: Path, k: int) -> dict:
    return json.loads((partial / fmt.CHUNKS / f"{k:08d}.json").read_text())


def _prepare_partial(partial: Path, key: fmt.CacheKey, n: int, stride: int, chunk_size: int, decoder: str = "pil",
                     shard: Optional[sh.Shard] = None, storage: str = "raw") -> int:
    """Create or reopen ``partial``; return the chunk size its progress files use (it pins the shard count). Only the
    decoder that wrote its chunks continues them (another one's records would not be byte-identical). A partial
    other builders are working in is never wiped: a refusal names them."""
    key_file = partial / fmt.KEY_FILE
    if key_file.is_file():
        pinned = json.loads(key_file.read_text())
        images = partial / fmt.IMAGES
        shards = int(pinned.get("shards", 1))
        pixels_ok = storage == "jpeg" or (images.is_file() and images.stat().st_size == n * stride)
        if pinned.get("key") == key.to_dict() and pinned.get("decoder", "pil") == decoder and pixels_ok:
            if shard is None or shard.count == shards:
                return int(pinned["chunk_size"])
            held = sh.held_shards(partial, shards)
            if held:
                raise fmt.CacheError(f"{partial} is being built as {shards} shards (shard(s) {', '.join(held)} running); "
                                     f"give --shard I/{shards}, or wait for them to end")
            pinned["shards"] = shard.count  # progress is per chunk: another count continues it where it stopped
            _atomic_write(key_file, json.dumps(pinned, sort_keys=True))
            return int(pinned["chunk_size"])
        held = sh.held_shards(partial, shards)
        if held or (shard is not None and pinned.get("decoder", "pil") != decoder):
            raise fmt.CacheError(f"{partial} was started with decoder {pinned.get('decoder', 'pil')!r}"
                                 f"{' (shard(s) ' + ', '.join(held) + ' running)' if held else ''}; this builder decodes "
                                 f"with {decoder!r}, whose records would differ: build every shard with the same "
                                 f"cache.decoder, or delete {partial} to start afresh")
    shutil.rmtree(partial, ignore_errors=True)  # unusable leftovers: start this build afresh
    (partial / fmt.CHUNKS).mkdir(parents=True)
    if storage == "raw":
        with open(partial / fmt.IMAGES, "wb") as f:
            f.truncate(n * stride)  # sparse: untouched records read as zeros
    pin = {"key": key.to_dict(), "chunk_size": chunk_size, "decoder": decoder}
    if shard is not None:
        pin["shards"] = shard.count
    _atomic_write(key_file, json.dumps(pin, sort_keys=True))
    return chunk_size


def _run_jobs(jobs, partial: Path, n: int, cfg, split: str, data, workers: Optional[int], progress: bool, already: int,
              decoder: Optional[dict] = None, total: Optional[int] = None) -> int:
    if not jobs:
        return 0
    from tqdm import tqdm

    workers = workers or cfg.cache.workers or os.cpu_count() or 1
    decoder = decoder or {"decoder": "pil"}
    threads = 1
    if decoder["decoder"] == "dali":  # one process drives one pipeline (one GPU context) with a thread per core
        workers, threads = 1, workers
    workers = max(1, min(workers, len(jobs)))
    quality = cfg.cache.jpeg_quality if cfg.cache.storage == "jpeg" else 0
    init = (str(partial / fmt.IMAGES), n, cfg.cache.stored_size, cfg.cache.resize_policy, cfg.cache.draft,
            str(partial / fmt.CHUNKS), cfg.data.on_bad_image, decoder, threads, quality)
    decoded = 0
    context = get_context("fork" if os.name == "posix" else "spawn")
    # DALI decodes in this process: a forked child cannot use CUDA once the parent has asked torch about the card
    in_process = decoder["decoder"] == "dali"
    with tqdm(total=n if total is None else total, initial=already, unit="img", desc=f"cache {split}", disable=not progress, smoothing=0.1) as bar, \
            (nullcontext() if in_process else context.Pool(workers, _init_worker, init)) as pool:  # closed on any exception
        if in_process:
            _init_worker(*init)
        for k, count, rejects in (map(_build_chunk, jobs) if in_process else pool.imap_unordered(_build_chunk, jobs)):
            decoded += count
            bar.update(count)
            if rejects and cfg.data.on_bad_image == "error":
                if pool is not None:
                    pool.terminate()
                raise fmt.CacheBuildError(_bad_report(rejects, data, cfg, split))
    if in_process:
        _W.clear()  # the records' map and the pipeline
    return decoded


def _bad_report(rejects: list[dict], data, cfg, split: str) -> str:
    lines = [f"{len(rejects)} bad image(s) while building the {split} cache (data.on_bad_image=error):"]
    for r in rejects[:10]:
        lines.append(f"  manifest row {int(data.rows[r['record']])}: {r['path']}: {r['reason']}")
    lines.append("Fix or remove these rows, or set --data.on_bad_image=skip to leave them out (listed in rejects.csv); "
                 f"then rerun: {fmt.build_command(cfg, split)}")
    return "\n".join(lines)


def _finish(partial: Path, final: Path, key: fmt.CacheKey, data, size: int, n_chunks: int, fingerprint: str,
            storage: str = "raw") -> BuildSummary:
    """Collect the chunks' checksums and rejects (jpeg: concatenate their records), verify every record, seal."""
    n = len(data)
    sums, sizes = np.zeros(n, np.uint32), np.zeros(n, np.int64)
    rejects: list[dict] = []
    for k in range(n_chunks):
        chunk = _chunk_flag(partial, k)
        sums[chunk["start"] : chunk["start"] + len(chunk["checksums"])] = chunk["checksums"]
        sizes[chunk["start"] : chunk["start"] + len(chunk["checksums"])] = chunk.get("sizes", 0)
        rejects += chunk["rejects"]
    if storage == "jpeg":
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        with open(partial / fmt.ENCODED, "wb") as out:
            for k in range(n_chunks):
                with open(partial / fmt.CHUNKS / f"{k:08d}.jpg", "rb") as f:
                    shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
        np.save(partial / fmt.OFFSETS, offsets)
        bad = verify_encoded(partial / fmt.ENCODED, offsets, sums)
    else:
        bad = verify_records(partial / fmt.IMAGES, sums, size)
    if bad:
        shutil.rmtree(partial / fmt.CHUNKS)  # records do not match what the workers wrote: rebuild from scratch
        (partial / fmt.CHUNKS).mkdir()
        raise fmt.CacheError(f"{partial}: {len(bad)} records changed after they were written (first: {bad[:5]}); rerun to rebuild")
    return seal_records(partial, final, key, data, size, sums, rejects, fingerprint)


def verify_encoded(path: Path, offsets: np.ndarray, sums: np.ndarray) -> list[int]:
    """Records of an ``images.jpg`` file whose bytes do not match ``sums``."""
    blob = np.fromfile(path, dtype=np.uint8) if offsets[-1] else np.zeros(0, np.uint8)
    if len(blob) != offsets[-1]:
        return list(range(len(sums)))
    return fmt.bad_payloads(lambda i: blob[offsets[i] : offsets[i + 1]], sums, f"verify {path.parent.name}")


def _drop_if_stale(final: Path, meta: dict, paths: list[str]) -> bool:
    """A finished cache whose image files changed (replaced in place) is deleted, so the build decodes them again."""
    stale = fmt.changed_images(meta, paths, final)
    if stale:
        print(f"{final}: {stale}; rebuilding it", flush=True)
        shutil.rmtree(final)
    return bool(stale)


def find_pixel_source(root: Path, key: fmt.CacheKey, fingerprint: str) -> Optional[Path]:
    """The newest finished cache under ``root`` whose pixels are the ones ``key`` asks for, decoded from the
    same files (``format.images_fingerprint``), or None."""
    if not root.is_dir():
        return None
    metas = sorted(root.glob(f"{key.split}-*/{fmt.METADATA}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for m in metas:
        try:
            meta = json.loads(m.read_text())
            old = meta["key"]
        except (OSError, ValueError, KeyError):
            continue
        same_files = meta.get("images_fingerprint") == fingerprint
        files = fmt.pixel_files(fmt.key_storage(old))
        if same_files and {k: old.get(k) for k in fmt.PIXEL_KEY} == key.pixel_key and \
                all((m.parent / f).is_file() for f in files):
            return m.parent
    return None


def _reuse_pixels(source: Path, partial: Path, final: Path, key: fmt.CacheKey, data, size: int, cfg,
                  fingerprint: str) -> BuildSummary:
    """Seal a cache from ``source``'s images, checksums and rejects plus ``data``'s fields (see the module doc)."""
    sums = np.load(source / fmt.CHECKSUMS)
    if len(sums) != len(data):
        raise fmt.CacheError(f"{source}: {len(sums)} records, expected {len(data)}; delete it and rebuild")
    rejects = [{"record": int(r["record"]), "path": r["path"], "reason": r["reason"]} for r in fmt.read_rejects(source)]
    if rejects and cfg.data.on_bad_image == "error":  # what a decode build would say about the same images
        raise fmt.CacheBuildError(_bad_report(rejects, data, cfg, key.split))
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in fmt.pixel_files(fmt.key_storage(key.to_dict())):
        try:
            os.link(source / name, partial / name)  # finished caches are read-only: sharing the inode is safe
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(source / name, partial / name)
    summary = seal_records(partial, final, key, data, size, sums, rejects, fingerprint, pixels_from=source.name)
    summary.pixels_from = source
    return summary


def seal_records(partial: Path, final: Path, key: fmt.CacheKey, data, size: int, sums: np.ndarray, rejects: list[dict],
                 fingerprint: str, pixels_from: Optional[str] = None) -> BuildSummary:
    """Write the per-record fields, checksums, good records, rejects and metadata; rename to ``final``. ``partial``
    holds the records already (``format.pixel_files``); every cache is sealed here, the benchmark's synthetic one
    too (tools/bench_loaders.py), so no folder's metadata drifts from the format."""
    n, stride = len(data), fmt.record_stride(size)
    good = np.setdiff1d(np.arange(n, dtype=np.int64), [r["record"] for r in rejects])  # sorted, like the records
    fields = record_fields(data)
    for name, dtype in fields.items():
        np.save(partial / f"{name}.npy", np.ascontiguousarray(getattr(data, name), dtype=dtype))
    np.save(partial / fmt.CHECKSUMS, sums)
    np.save(partial / fmt.GOOD, good)
    rejects.sort(key=lambda r: r["record"])
    with open(partial / fmt.REJECTS, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["record", "row", "path", "reason"])
        for r in rejects:
            w.writerow([r["record"], int(data.rows[r["record"]]), r["path"], r["reason"]])
    meta = {
        "key": key.to_dict(),
        "key_digest": key.digest,
        "count": n,
        "good": int(len(good)),
        "rejected": len(rejects),
        "stride": stride,
        "record_bytes": fmt.record_bytes(size),
        "shape": [size, size, 3],
        "dtype": "uint8",
        "layout": "HWC RGB",
        "fields": {name: {"dtype": str(dt), "shape": list(getattr(data, name).shape)} for name, dt in fields.items()},
        "checksum": "zlib.crc32 of each record's payload",
        "pixels_from": pixels_from,
        "decoder": _pinned_decoder(partial),  # what decoded these pixels; null when they are pixels_from's
        "images_fingerprint": fingerprint,
        "versions": fmt.library_versions(),
    }
    if fmt.key_storage(meta["key"]) == "jpeg":  # raw caches keep the metadata they had before storage existed
        offsets = np.load(partial / fmt.OFFSETS)
        meta.update(storage="jpeg", jpeg_quality=key.jpeg_quality, stride=None, encoded_bytes=int(offsets[-1]),
                    checksum="zlib.crc32 of each record's JPEG bytes (images.jpg[offsets[i]:offsets[i + 1]])")
    _atomic_write(partial / fmt.METADATA, json.dumps(meta, indent=1, sort_keys=True))
    shutil.rmtree(partial / fmt.CHUNKS, ignore_errors=True)  # a decode build's progress files, dropped last
    shutil.rmtree(partial / fmt.SHARDS, ignore_errors=True)  # a sharded build's locks (none is held by now)
    (partial / fmt.KEY_FILE).unlink(missing_ok=True)
    _fsync_dir(partial)
    os.rename(partial, final)
    _fsync_dir(final.parent)
    return BuildSummary(key.split, final, n, int(len(good)), rejects)


def record_fields(data) -> dict:
    """The per-record fields a cache of ``data`` (a SplitData) stores: ``FIELDS``, plus ``CAPTION_FIELDS`` when
    its samples are images with several captions (data.group_captions)."""
    return {**fmt.FIELDS, **(fmt.CAPTION_FIELDS if data.caption_ids is not None else {})}


def _pinned_decoder(partial: Path) -> Optional[str]:
    key_file = partial / fmt.KEY_FILE
    return json.loads(key_file.read_text()).get("decoder", "pil") if key_file.is_file() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bad_records(records: np.ndarray, sums: np.ndarray, payload: int, desc: str = "verify") -> list[int]:
    """Indices of the rows of ``records`` (uint8 [n, stride]) whose first ``payload`` bytes do not match ``sums``."""
    return fmt.bad_payloads(lambda i: records[i, :payload], sums, desc)


def verify_records(images: Path, sums: np.ndarray, size: int) -> list[int]:
    """Records of the ``images`` file whose payload does not match ``sums`` (maps it read-only for the check)."""
    mm, view = fmt.open_records(images, len(sums), fmt.record_stride(size), writable=False)
    try:
        return bad_records(view, sums, fmt.record_bytes(size), desc=f"verify {images.parent.name}")
    finally:
        del view
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere; the map closes when it dies
                pass
