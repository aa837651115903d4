"""Loader throughput on one data set, in one run (a script, not a test: timings are noisy).

    python tools/bench_loaders.py --config CONFIG [--section.key=value ...] [--json OUT]
                                  [--batches N] [--batch-size B] [--synthetic N] [--build]

Loaders (the ``LOADERS`` registry: name -> function(cfg, ctx, args) -> images/s; add
e.g. "dali_cpu" there):
  pil             the reference: PIL decode + torchvision transforms in DataLoader workers
  cache           the cache loader on the configured split's real cache (uint8 batches
                  at cache.stored_size, ready for the device)
  cache_jpeg      the cache loader on the same split cached with cache.storage=jpeg
                  (records decoded in the loader's threads), with both caches' sizes
  cache_synth     the cache loader on a synthetic cache of --synthetic records at
                  --synthetic-size (default 256), written with the cache format by
                  replicating real decoded demo records (page-cache resident)
  copy_limit      the same gathers as cache_synth as bare threaded np.take copies: the
                  machine's memory-copy ceiling that cache_synth is measured against
  cache+augment   cache_synth plus the CPU reference augmentation of ``kernels``
  dali_cpu        loader.backend=dali: DALI file reader + decode + augment on DALI's CPU
                  operators (float NCHW out; n/a without nvidia-dali)
  dali_cache_cpu  loader.backend=dali_cache: the real cache fed to DALI through
                  external_source, augmented by DALI's CPU operators (n/a without nvidia-dali)
Also reported: the cache loader's RSS before/after a full pass over the synthetic
cache, and with --build the per-core cache build speed against a full-size PIL decode + resize.
With --larger-than-memory: random vs block order (loader.order) on a synthetic cache --ooc-ratio x
larger than the memory the loader may use (a memory cgroup of --ooc-limit-mib), images/s and disk MB/s,
against the same loader on the same cache in memory.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from engine.errors import exit_on_user_error  # noqa: E402
from engine.optional import has_dali  # noqa: E402
from engine.registry import Registry  # noqa: E402

LOADERS = Registry("--only")  # name -> function(cfg, ctx, args) -> images/s or None (n/a here)
loader_bench = LOADERS.register
EXTRA: dict = {}  # non-throughput figures (RSS, build speed) for the JSON


def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def _time_batches(loader, batches: int, warmup: int = 2, work: Callable | None = None) -> float:
    """Images/s over ``batches`` batches after ``warmup``, ``work(batch)`` included; loops over epochs as needed."""
    done, images, t0 = 0, 0, None
    while done < warmup + batches:
        for b in loader:
            if work is not None:
                work(b)
            if done == warmup:
                t0 = time.perf_counter()
            elif done > warmup:
                images += b.size
            done += 1
            if done >= warmup + batches + 1:
                break
    return images / (time.perf_counter() - t0)


@loader_bench("pil")
def bench_pil(cfg, ctx, args) -> float:
    from engine.data.loaders import create_loader

    cfg.loader.backend = "pil"
    n = min(args.pil_batches, len(ctx.split("train")) // cfg.loader.batch_size - 3)
    return _time_batches(create_loader(cfg, ctx, "train", True), n, warmup=1)


@loader_bench("cache")
def bench_cache(cfg, ctx, args) -> float:
    from engine.data.cache import build_cache
    from engine.data.loaders import create_loader

    build_cache(cfg, ctx, "train", progress=False)
    cfg.loader.backend = "cache"
    return _time_batches(create_loader(cfg, ctx, "train", True), args.batches)


@loader_bench("cache_jpeg")
def bench_cache_jpeg(cfg, ctx, args) -> float:
    """``cache`` on the same split cached with cache.storage=jpeg (records decoded by the loader, Pillow in its
    threads); the sizes of both caches, and a decode-only figure of Pillow vs DALI's CPU decoder on the same
    records, go to the "jpeg_storage" entry."""
    import copy

    from engine.data.cache import build_cache, open_cache
    from engine.data.cache.decode_jpeg import DaliRecords, PillowRecords
    from engine.data.loaders import create_loader

    raw, jpeg = copy.deepcopy(cfg), copy.deepcopy(cfg)
    raw.cache.storage, jpeg.cache.storage = "raw", "jpeg"
    for c in (raw, jpeg):
        build_cache(c, ctx, "train", progress=False)
        c.loader.backend = "cache"
    readers = {name: open_cache(c, ctx, "train") for name, c in (("raw", raw), ("jpeg", jpeg))}
    sizes = {name: sum((r.folder / f).stat().st_size for f in ("images.u8", "images.jpg", "offsets.npy")
                       if (r.folder / f).is_file()) for name, r in readers.items()}
    r = readers["jpeg"]
    encoded, out = r.encoded_records(r.good), np.empty((len(r.good), r.record_bytes), np.uint8)
    decode = {"pil_1_thread": PillowRecords(r.size)}
    if has_dali():
        decode[f"dali_cpu_{cfg.loader.num_workers}_threads"] = DaliRecords(r.size, "cpu", cfg.loader.num_workers)
    rates = {}
    for name, dec in decode.items():
        dec.into(encoded[:8], out)  # warm-up (DALI builds its pipeline)
        t0 = time.perf_counter()
        dec.into(encoded, out)
        rates[name] = round(len(encoded) / (time.perf_counter() - t0), 1)
    loss = np.abs(out.astype(np.int16) - readers["raw"].pixels(r.good).reshape(len(r.good), -1))  # JPEG's error
    EXTRA["jpeg_storage"] = {"records": r.count, "size": r.size, "quality": jpeg.cache.jpeg_quality,
                             "bytes": sizes, "raw_over_jpeg": round(sizes["raw"] / sizes["jpeg"], 2),
                             "mean_abs_vs_raw": round(float(loss.mean()), 3),
                             "frac_over_16": round(float((loss > 16).mean()), 5), "decode_images_per_s": rates}
    return _time_batches(create_loader(jpeg, ctx, "train", True), args.batches)


def synthetic_cache(cfg, ctx, folder: Path, n: int, size: int):
    """A cache of ``n`` records at ``size`` in the real format: demo images decoded once, replicated, sealed by
    the writer (``writer.seal_records``: the fields, checksums, rejects and metadata every cache has). Its key is
    the train split's with ``rows_sha``/``images_sha`` "synthetic": no run's cache or selection takes it for its own."""
    import dataclasses

    from engine.data.cache import CacheReader
    from engine.data.cache import format as fmt
    from engine.data.cache.decode import decode_resized
    from engine.data.cache.writer import seal_records

    if (folder / fmt.METADATA).is_file() and json.loads((folder / fmt.METADATA).read_text())["count"] == n:
        return CacheReader(folder)
    shutil.rmtree(folder, ignore_errors=True)
    partial = folder.with_name(folder.name + fmt.PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    data = ctx.split("train")
    base = np.stack([decode_resized(p, size, cfg.cache.resize_policy, cfg.cache.draft) for p in data.paths[:64]])
    stride = fmt.record_stride(size)
    with open(partial / fmt.IMAGES, "wb") as f:
        f.truncate(n * stride)
    mm, view = fmt.open_records(partial / fmt.IMAGES, n, stride, writable=True)
    src = np.arange(n) % len(base)
    for a in range(0, n, 1024):  # in chunks: one fancy-indexed copy of a cache larger than memory would not fit
        view[a : a + 1024, : fmt.record_bytes(size)] = base.reshape(len(base), -1)[src[a : a + 1024]]
    mm.flush()
    sums = np.array([fmt.checksum(view[i, : fmt.record_bytes(size)]) for i in range(min(n, len(base)))], np.uint32)[src]
    del view
    mm.close()  # drop the writer's mapping so RSS below measures the loader alone
    rows = src % len(data)
    replicated = dataclasses.replace(data, paths=[data.paths[i] for i in rows], **{
        f.name: getattr(data, f.name)[rows] for f in dataclasses.fields(data)
        if isinstance(getattr(data, f.name), np.ndarray)})
    key = dataclasses.replace(fmt.cache_key(cfg, ctx, "train"), rows_sha="synthetic", images_sha="synthetic",
                              stored_size=size)
    seal_records(partial, folder, key, replicated, size, sums, [], fingerprint="")
    return CacheReader(folder)


def _synth_loader(cfg, ctx, args):
    from engine.data.cache.loader import CacheLoader

    reader = synthetic_cache(cfg, ctx, Path(cfg.cache.dir) / f"synthetic-{args.synthetic}-{args.synthetic_size}",
                             args.synthetic, args.synthetic_size)
    return CacheLoader(reader, batch_size=cfg.loader.batch_size, train=True, rank=0, world=1, seed=cfg.run.seed,
                       num_workers=cfg.loader.num_workers, prefetch=cfg.loader.prefetch, pin_memory=cfg.loader.pin_memory,
                       release_pages=cfg.loader.release_pages)


@loader_bench("cache_synth")
def bench_cache_synth(cfg, ctx, args) -> float:
    loader = _synth_loader(cfg, ctx, args)
    list(loader)  # one pass: page cache warm, like a training run after its first epoch
    rss_before = _rss()
    t0 = time.perf_counter()
    images = sum(b.size for b in loader)  # a full pass
    rate = images / (time.perf_counter() - t0)
    EXTRA["cache_synth_rss_mib"] = {"before_pass": rss_before, "after_pass": _rss(), "records": args.synthetic,
                                    "cache_mib": args.synthetic * loader.reader.stride >> 20}
    return rate


@loader_bench("copy_limit")
def bench_copy_limit(cfg, ctx, args) -> float:
    """The ceiling for ``cache_synth``: the same random record gathers (one ``np.take`` per batch into a
    reused buffer, ``loader.num_workers`` threads), with no loader around them: this machine's copy limit."""
    from concurrent.futures import ThreadPoolExecutor

    reader = _synth_loader(cfg, ctx, args).reader
    n, bs, workers = reader.count, cfg.loader.batch_size, max(1, cfg.loader.num_workers)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(n, bs, replace=False)) for _ in range(n // bs)]
    buffers = [np.empty((bs, reader.stride), np.uint8) for _ in range(workers)]
    gather = lambda k: np.take(reader.images, batches[k], axis=0, out=buffers[k % workers], mode="clip")  # noqa: E731
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(gather, range(len(batches))))  # warm: page cache and mapping
        t0 = time.perf_counter()
        list(pool.map(gather, range(len(batches))))
    return len(batches) * bs / (time.perf_counter() - t0)


@loader_bench("cache+augment")
def bench_cache_augment(cfg, ctx, args) -> float:
    import torch

    from kernels import Augmenter

    aug = Augmenter(cfg.augment, out_size=cfg.data.image_size, seed=cfg.run.seed, dtype=torch.float32)
    loader = _synth_loader(cfg, ctx, args)
    # warmup=1: the clock starts once the second batch is augmented, as it always has for this figure
    return _time_batches(loader, args.batches, warmup=1, work=lambda b: aug.train(b.images, b.aug_key, loader.epoch))


@loader_bench("dali_cpu")
def bench_dali_cpu(cfg, ctx, args) -> float | None:
    from engine.data.loaders import create_loader

    if not has_dali():
        return None
    cfg.loader.backend = "dali"
    n = min(4 * args.pil_batches, len(ctx.split("train")) // cfg.loader.batch_size - 3)
    return _time_batches(create_loader(cfg, ctx, "train", True), n, warmup=1)


@loader_bench("dali_cache_cpu")
def bench_dali_cache_cpu(cfg, ctx, args) -> float | None:
    from engine.data.cache import build_cache
    from engine.data.loaders import create_loader

    if not has_dali():
        return None
    build_cache(cfg, ctx, "train", progress=False)
    cfg.loader.backend = "dali_cache"
    return _time_batches(create_loader(cfg, ctx, "train", True), min(args.batches, 60))


def bench_build(cfg, ctx, args) -> dict:
    """Per core: full-size PIL decode + resize (what the PIL loader pays per sample) vs the cache's decode."""
    from PIL import Image

    from engine.data.cache import build_cache
    from engine.data.cache.decode import decode_resized
    from engine.data.pil_loader import decode_rgb

    paths = ctx.split("train").paths[: args.build_images]
    size = cfg.cache.stored_size

    def pil_full(p):
        im = decode_rgb(p)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)))

    out = {}
    paths_ = {"pil_full_decode_resize": pil_full,
              "cache_decode": lambda p: decode_resized(p, size, cfg.cache.resize_policy, cfg.cache.draft)}
    spent = dict.fromkeys(paths_, 0.0)
    for p in paths:  # interleaved per image, so drifting machine load hits both paths alike
        for name, fn in paths_.items():
            t0 = time.perf_counter()
            fn(p)
            spent[name] += time.perf_counter() - t0
    for name in paths_:
        out[f"{name}_img_per_s_per_core"] = len(paths) / spent[name]
    out["per_core_speedup"] = out["cache_decode_img_per_s_per_core"] / out["pil_full_decode_resize_img_per_s_per_core"]
    cfg.cache.dir = str(Path(cfg.cache.dir) / "build-bench")
    shutil.rmtree(cfg.cache.dir, ignore_errors=True)
    ctx.split("train")  # tokenise outside the timed build
    s = build_cache(cfg, ctx, "train", progress=False)
    out["full_build_img_per_s_all_cores"] = s.decoded / s.seconds
    out["build_workers"] = cfg.cache.workers or os.cpu_count()
    out["images"] = len(paths)
    out["stored_size"] = size
    return out


# --- a cache larger than the loader's memory: random vs block order (issue #16 item 3) ---------------------------

def _own_memory_cgroup() -> tuple[Path, str] | None:
    """This process's memory cgroup folder and its limit file: cgroup v2 (memory.max) or v1 (memory.limit_in_bytes)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, rel = line.split(":", 2)
        if hierarchy == "0":  # v2: the unified tree, if it offers the memory controller to children
            v2 = Path("/sys/fs/cgroup") / rel.lstrip("/")
            if (v2 / "cgroup.subtree_control").is_file() and "memory" in (v2 / "cgroup.subtree_control").read_text().split():
                return v2, "memory.max"
        elif "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / rel.lstrip("/"), "memory.limit_in_bytes"
    return None


class MemoryLimit:
    """Moves this process into a child of its own memory cgroup limited to ``limit_mib`` (page cache included), and
    back on exit. ``systemd-run --scope -p MemoryMax=`` does the same from outside where systemd is PID 1.
    ``self.how`` says what was used; None if no cgroup could be written (no permission, no memory controller)."""

    def __init__(self, limit_mib: int):
        self.limit_mib, self.how, self._child, self._parent = limit_mib, None, None, None

    def __enter__(self):
        own = _own_memory_cgroup()
        if own is None:
            return self
        parent, limit_file = own
        child = parent / f"bench_loaders_{os.getpid()}"
        try:
            child.mkdir()
            (child / limit_file).write_text(str(self.limit_mib << 20))
            (child / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as e:
            print(f"no memory cgroup ({child}: {e})", flush=True)
            if child.exists():
                child.rmdir()
            return self
        self._child, self._parent, self.how = child, parent, f"cgroup {child / limit_file} = {self.limit_mib} MiB"
        return self

    def __exit__(self, *exc):
        if self._child is not None:
            (self._parent / "cgroup.procs").write_text(str(os.getpid()))
            self._child.rmdir()


def _drop_file_pages(path: Path) -> None:
    """Evict a file's clean, unmapped pages from the page cache (what a cold cache, or one too big to stay, reads)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_bytes() -> int:
    """Bytes this process has had fetched from storage (page faults and readahead included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes"))


def _timed_pass(loader, seconds: float, warmup_s: float) -> dict:
    """images/s and disk MB/s of ``loader`` over ``seconds`` after ``warmup_s``, across epochs as needed."""
    t_start, t0, images, read0 = time.perf_counter(), None, 0, 0
    while True:
        for b in loader:
            now = time.perf_counter()
            if t0 is None and now - t_start >= warmup_s:
                t0, read0 = now, _read_bytes()
            elif t0 is not None:
                images += b.size
                if now - t0 >= seconds:
                    dt = now - t0
                    return {"images_per_s": round(images / dt, 1), "disk_mb_per_s": round((_read_bytes() - read0) / dt / 1e6, 1),
                            "gathered_mb_per_s": round(images * loader.reader.stride / dt / 1e6, 1)}


def bench_larger_than_memory(cfg, ctx, args) -> dict:
    """The cache loader on a synthetic cache of about ``--ooc-ratio`` x ``--ooc-limit-mib``, read in random and in
    block order inside a memory cgroup of ``--ooc-limit-mib`` (ABBA passes, pages dropped before each), against
    the same loader on the same cache in memory (no limit, page cache warm)."""
    import gc

    from engine.data.cache import format as fmt
    from engine.data.cache.loader import CacheLoader

    size, limit = args.synthetic_size, args.ooc_limit_mib
    n = int(args.ooc_ratio * limit * (1 << 20)) // fmt.record_stride(size)
    folder = Path(cfg.cache.dir) / f"synthetic-{n}-{size}"
    images_file = folder / fmt.IMAGES
    synthetic_cache(cfg, ctx, folder, n, size)

    def loader(order: str):
        from engine.data.cache.reader import CacheReader

        ld = CacheLoader(CacheReader(folder), batch_size=cfg.loader.batch_size, train=True, rank=0, world=1,
                         seed=cfg.run.seed, num_workers=cfg.loader.num_workers, prefetch=cfg.loader.prefetch,
                         pin_memory=cfg.loader.pin_memory)
        if order == "block":
            ld.block_order(cfg.loader.block_size, cfg.loader.shuffle_window)
        return ld

    def one_pass(order: str, cold: bool) -> dict:
        if cold:
            gc.collect()  # the previous pass's mapping is gone, so its pages can be dropped
            _drop_file_pages(images_file)
        ld = loader(order)
        out = _timed_pass(ld, args.ooc_seconds, args.ooc_warmup)
        del ld
        return out

    out: dict = {"records": n, "stored_size": size, "cache_mib": n * fmt.record_stride(size) >> 20, "limit_mib": limit,
                 "block_size": cfg.loader.block_size, "shuffle_window": cfg.loader.shuffle_window,
                 "batch_size": cfg.loader.batch_size, "num_workers": cfg.loader.num_workers}
    with open(images_file, "rb") as f:  # the whole cache into the page cache
        buf = bytearray(64 << 20)
        while f.readinto(buf):
            pass
    out["in_memory_random"] = one_pass("random", cold=False)
    passes = []
    with MemoryLimit(limit) as mem:
        out["memory_limit"] = mem.how or "none: pages dropped before each pass (a cold cache, not a bounded one)"
        for order in ("random", "block", "block", "random"):  # ABBA: the shared machine drifts
            passes.append((order, one_pass(order, cold=True)))
            print(f"  {order:>6} order, limited: {passes[-1][1]}", flush=True)
    for order in ("random", "block"):
        runs = [p for o, p in passes if o == order]
        out[f"limited_{order}"] = {k: round(sum(r[k] for r in runs) / len(runs), 1) for k in runs[0]} | {"passes": runs}
    out["block_over_random"] = round(out["limited_block"]["images_per_s"] / out["limited_random"]["images_per_s"], 2)
    out["in_memory_over_block"] = round(out["in_memory_random"]["images_per_s"] / out["limited_block"]["images_per_s"], 2)
    if not args.keep_ooc_cache:
        shutil.rmtree(folder)
    return out


@exit_on_user_error  # config, manifest or cache problems: one line naming the key/file/row, exit 2
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--json", help="write {loader: images/s, ...} here")
    p.add_argument("--batches", type=int, default=200, help="timed batches per cache loader")
    p.add_argument("--pil-batches", type=int, default=8, help="timed batches of the (slow) PIL loader")
    p.add_argument("--batch-size", type=int, help="override loader.batch_size")
    p.add_argument("--synthetic", type=int, default=20000, help="records in the synthetic cache")
    p.add_argument("--synthetic-size", type=int, default=256, help="stored size of the synthetic cache")
    p.add_argument("--only", nargs="*", help=f"subset of {list(LOADERS)} (none if bare)")
    p.add_argument("--build", action="store_true", help="also measure cache build speed per core")
    p.add_argument("--build-images", type=int, default=48)
    p.add_argument("--larger-than-memory", action="store_true",
                   help="also: random vs block order on a cache --ooc-ratio x larger than a --ooc-limit-mib memory cgroup")
    p.add_argument("--ooc-limit-mib", type=int, default=2048, help="memory the loader may use, page cache included")
    p.add_argument("--ooc-ratio", type=float, default=2.0, help="cache size / --ooc-limit-mib")
    p.add_argument("--ooc-seconds", type=float, default=20.0, help="timed seconds per pass")
    p.add_argument("--ooc-warmup", type=float, default=3.0, help="untimed seconds at the start of each pass")
    p.add_argument("--keep-ooc-cache", action="store_true", help="keep the large synthetic cache for another run")
    args, overrides = p.parse_known_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from engine.config import load_config
    from engine.data.context import DataContext

    cfg = load_config(args.config, overrides)
    if args.batch_size:
        cfg.loader.batch_size = args.batch_size
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length)
    results: dict = {}
    for name, fn in LOADERS.items():
        if args.only is not None and name not in args.only:  # a bare --only: none of them
            continue
        rate = fn(cfg, ctx, args)
        results[name] = None if rate is None else round(rate, 1)
        print(f"{name:>14}: {'n/a' if rate is None else f'{rate:,.0f} images/s'}", flush=True)
    if results.get("pil") and results.get("cache"):
        print(f"cache / pil: {results['cache'] / results['pil']:,.0f}x")
    if results.get("pil") and results.get("cache_synth"):
        print(f"cache_synth / pil: {results['cache_synth'] / results['pil']:,.0f}x")
    for name in ("dali_cpu", "dali_cache_cpu"):
        if results.get("pil") and results.get(name):
            print(f"{name} / pil: {results[name] / results['pil']:,.1f}x")
    if args.larger_than_memory:
        EXTRA["larger_than_memory"] = bench_larger_than_memory(cfg, ctx, args)
    if args.build:
        EXTRA["build"] = bench_build(cfg, ctx, args)
    for k, v in EXTRA.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "_extra": EXTRA, "_batch_size": cfg.loader.batch_size}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
