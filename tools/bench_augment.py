"""Benchmark the batched augmentation (not a test: prints a table, optionally writes JSON).

CPU: the PyTorch reference on a uint8 NHWC batch vs the per-sample PIL +
torchvision pipeline (RandomResizedCrop + flip + ColorJitter + ToTensor +
Normalize) on PIL images of the same size; images/s with one thread (per
core) and with all threads.
CUDA (if present): the fused Triton kernel and the reference, against the
bytes-moved floor (read the uint8 input once + write the output once, at the
bandwidth of a measured device-to-device copy).

    python tools/bench_augment.py [--batch 64] [--in-size 256] [--out-size 224] [--json OUT]
                                  [--photos MANIFEST.csv]

With ``--photos`` the CPU comparison is also made the way users meet it: the
per-sample PIL + torchvision pipeline on the original JPEG photos (decode +
transforms, what the ``pil`` loader does per sample) against the reference
augmentation on the cache's uint8 records of the same photos (decoded once,
ahead of time, at --in-size).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kernels/, not an installed copy

import engine  # noqa: E402,F401  (process defaults, set before torch is imported: see engine/__init__.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from kernels import AugmentConfig, Augmenter  # noqa: E402


def _median_rate(fn, n_images: int, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return n_images / statistics.median(times)


def _pil_pipeline(images_u8, cfg: AugmentConfig, out_size: int):
    from PIL import Image
    import torchvision.transforms as T

    pil = [Image.fromarray(im.numpy()) for im in images_u8]
    tf = T.Compose([T.RandomResizedCrop(out_size, scale=cfg.scale, ratio=cfg.ratio), T.RandomHorizontalFlip(cfg.hflip),
                    T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue), T.ToTensor(),
                    T.Normalize(cfg.mean, cfg.std)])
    return lambda: torch.stack([tf(im) for im in pil])


def bench_cpu(args, cfg: AugmentConfig) -> list[dict]:
    images = torch.randint(0, 256, (args.batch, args.in_size, args.in_size, 3), dtype=torch.uint8)
    ids = torch.arange(args.batch)
    aug = Augmenter(cfg, args.out_size, seed=0, impl="reference")
    epoch = iter(range(10**9))
    rows = []
    for threads in (1, os.cpu_count()):
        torch.set_num_threads(threads)
        ref = _median_rate(lambda: aug.train(images, ids, next(epoch)), args.batch, args.repeats)
        pil = _median_rate(_pil_pipeline(images, cfg, args.out_size), args.batch, args.repeats)
        rows += [dict(device="cpu", impl="reference", threads=threads, images_per_s=ref),
                 dict(device="cpu", impl="pil+torchvision", threads=threads, images_per_s=pil)]
    return rows


def bench_photos(args, cfg: AugmentConfig) -> list[dict]:
    """Per core: PIL decode + transforms of the photos vs reference augmentation of their cached records.

    The three paths run interleaved, one pass each per round, so a slow phase of a shared machine
    hits all of them; the ratios are the medians of the per-round ratios.
    """
    import csv

    from engine.data.cache.decode import decode_resized
    from engine.data.reference import decode_rgb, pil_transforms

    manifest = Path(args.photos)
    paths = [str(manifest.parent / r["image"]) for r in csv.DictReader(open(manifest))][: args.batch]
    records = torch.from_numpy(np.stack([decode_resized(p, args.in_size, "crop", True) for p in paths]))
    tf = pil_transforms(cfg, args.out_size, train=True)
    aug = Augmenter(cfg, args.out_size, seed=0, impl="reference")
    compiled = Augmenter(replace(cfg, compile_reference=True), args.out_size, seed=0, impl="reference")
    ids = torch.arange(len(paths))
    torch.set_num_threads(1)
    runs = {"pil-photos": lambda: [tf(decode_rgb(p)) for p in paths],
            "reference-cache": lambda: aug.train(records, ids, 0),
            "reference-cache-compiled": lambda: compiled.train(records, ids, 0)}  # first call compiles
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    mp = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in paths) / len(paths) / 1e6
    pil = times["pil-photos"]
    return [dict(device="cpu", impl=name, threads=1, images_per_s=len(paths) / statistics.median(ts),
                 megapixels=mp, x_pil=statistics.median(p / t for p, t in zip(pil, ts)), rounds=len(ts))
            for name, ts in times.items()]


def bench_cuda(args, cfg: AugmentConfig) -> list[dict]:
    dev = torch.device("cuda")
    images = torch.randint(0, 256, (args.batch, args.in_size, args.in_size, 3), dtype=torch.uint8, device=dev)
    ids = torch.arange(args.batch)
    sync = torch.cuda.synchronize
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / (1 / _median_rate(lambda: dst.copy_(src), 1, 20, sync)) / 1e9  # read + write
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        out_bytes = args.batch * 3 * args.out_size**2 * torch.finfo(dtype).bits // 8
        floor = copy_gbs * 1e9 / ((images.numel() + out_bytes) / args.batch)
        for impl in ("triton", "reference"):
            aug = Augmenter(cfg, args.out_size, seed=0, dtype=dtype, impl=impl, device=dev)
            rate = _median_rate(lambda: aug.train(images, ids, 0), args.batch, args.repeats, sync)
            rows.append(dict(device=torch.cuda.get_device_name(), impl=impl, dtype=str(dtype).split(".")[-1],
                             images_per_s=rate, floor_images_per_s=floor, of_floor=rate / floor,
                             copy_gb_per_s=copy_gbs))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--in-size", type=int, default=256)
    ap.add_argument("--out-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--photos", type=Path, help="manifest of JPEG photos (e.g. data/demo/manifest.csv) for the decode+augment comparison")
    args = ap.parse_args()
    cfg = AugmentConfig()  # default recipe: RRC + flip + jitter(0.4, 0.4, 0.4), no hue/gray/erase
    rows = bench_cpu(args, cfg)
    if args.photos:
        rows += bench_photos(args, cfg)
    if torch.cuda.is_available():
        rows += bench_cuda(args, cfg)
    print(f"augmentation {args.in_size}x{args.in_size} uint8 -> {args.out_size} float32, batch {args.batch}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{'device':<24}{'impl':<26}{'threads/dtype':<15}{'images/s':>10}{'floor':>10}")
    for r in rows:
        extra = f"{r['floor_images_per_s']:>10.0f}" if "floor_images_per_s" in r else ""
        print(f"{r['device'][:23]:<24}{r['impl']:<26}{str(r.get('threads', r.get('dtype'))):<15}{r['images_per_s']:>10.1f}{extra}")
    cpu = {(r["impl"], r["threads"]): r["images_per_s"] for r in rows if r["device"] == "cpu"}
    for t in sorted({k[1] for k in cpu if k[0] == "reference"}):
        print(f"reference / PIL pipeline on decoded {args.in_size}px images, {t} thread(s): "
              f"{cpu[('reference', t)] / cpu[('pil+torchvision', t)]:.2f}x")
    for r in rows:
        if r["impl"].startswith("reference-cache"):
            print(f"{r['impl']} / PIL decode+transforms of the photos ({r['megapixels']:.2f} MP mean), per core: "
                  f"{r['x_pil']:.1f}x (median of {r['rounds']} interleaved rounds)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
