"""Benchmark the batched augmentation (not a test: prints a table, optionally writes JSON).

CPU: the PyTorch reference on a uint8 NHWC batch vs the per-sample PIL +
torchvision pipeline (RandomResizedCrop + flip + ColorJitter + ToTensor +
Normalize) on PIL images of the same size; images/s with one thread (per
core) and with all threads.
CUDA (if present, or ``--device``): the fused Triton kernel and the reference
against the bytes-moved floor (read the uint8 input once + write the output
once, at the bandwidth of a measured device-to-device copy; L2 flushed before
each timed call), for bf16 channels_last (what training uses on sm_80+), bf16
NCHW and fp32 NCHW; then the whole ``Augmenter.train`` call against a
ResNet-50 bf16 training step of the same batch.

    python tools/bench_augment.py [--batch 64] [--in-size 256] [--out-size 224] [--json OUT]
                                  [--photos MANIFEST.csv] [--device auto|cuda|cpu|none] [--skip-host]

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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import engine  # noqa: E402,F401  (process defaults, set before torch is imported: see engine/__init__.py)
from engine.errors import exit_on_user_error  # noqa: E402
from kernels import AugmentConfig, Augmenter, apply_reference, sample_params  # noqa: E402


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
    import torchvision.transforms as T
    from PIL import Image

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
    from engine.data.pil_loader import decode_rgb, pil_transforms

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


def _seconds(fn, dev: torch.device, repeats: int, rep_ms: int = 200) -> float:
    """Median seconds per call: CUDA events with the L2 flushed before each call on a GPU (``rep_ms`` of
    timed calls, at least), a host clock on CPU."""
    if dev.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=100, rep=max(rep_ms, 40 * repeats), return_mode="median") / 1e3
    return 1 / _median_rate(fn, 1, repeats)


def _train_step(model_name: str, batch: int, size: int, dev: torch.device, dtype: torch.dtype):
    """One ResNet training step the way the engine runs bf16 on sm_80+: bf16 weights (DeepSpeed's bf16 mode),
    channels_last, cross-entropy, backward, AdamW (fused on CUDA)."""
    import torchvision

    model = getattr(torchvision.models, model_name)(weights=None).to(dev, dtype, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    x = torch.randn(batch, 3, size, size, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _triton_launches(params, out_size: int, dev: torch.device):
    """``apply_triton`` with the per-batch tables built once, outside the timed call."""
    from kernels.augment.triton_kernels import launch, prepare

    prepared = prepare(params, out_size, dev)
    return lambda images, _params, *a, **kw: launch(images, prepared, *a, **kw)


def bench_device(args, cfg: AugmentConfig, dev: torch.device) -> list[dict]:
    """Kernel vs the bytes-moved floor, and the whole augmentation step vs a ResNet training step, on ``dev``.

    floor: read the uint8 input once and write the output once at the bandwidth of a measured
    device-to-device copy (bytes read + written).  ``kernel`` rows: for Triton the kernel launches alone
    (contrast-mean pass + fused pass) on sampling tables built beforehand, for the reference its whole
    call on parameters already on the device.  The ``Augmenter.train`` row is what a training step pays:
    sampling the per-sample parameters on the host, building the tables, copying them over, the kernels.
    """
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images = torch.randint(0, 256, (args.batch, args.in_size, args.in_size, 3), dtype=torch.uint8, device=dev)
    ids = torch.arange(args.batch)
    src = torch.empty(args.copy_mib * 2**20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / _seconds(lambda: dst.copy_(src), dev, args.repeats) / 1e9
    del src, dst
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    params = sample_params(cfg, 0, 0, ids, (args.in_size, args.in_size), args.out_size).to(dev)
    kw = dict(jitter=(cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0),
              grayscale=cfg.grayscale > 0, erasing=cfg.erasing > 0)
    impls = {"triton": _triton_launches(params, args.out_size, dev), "reference": apply_reference}
    if not args.device_reference:
        impls.pop("reference")
    rows = []
    for dtype, channels_last in ((torch.bfloat16, True), (torch.bfloat16, False), (torch.float32, False)):
        out_bytes = 3 * args.out_size**2 * torch.finfo(dtype).bits // 8
        floor = copy_gbs * 1e9 / (args.in_size**2 * 3 + out_bytes)
        layout = "channels_last" if channels_last else "nchw"
        for impl, fn in impls.items():
            t = _seconds(lambda: fn(images, params, args.out_size, cfg.mean, cfg.std, dtype=dtype,
                                    channels_last=channels_last, **kw), dev, args.repeats)
            rows.append(dict(device=name, impl=impl, part="kernel", dtype=str(dtype).split(".")[-1], layout=layout,
                             images_per_s=args.batch / t, floor_images_per_s=floor, of_floor=args.batch / t / floor,
                             copy_gb_per_s=copy_gbs, ms_per_batch=1e3 * t))
    aug = Augmenter(cfg, args.out_size, seed=0, dtype=torch.bfloat16, channels_last=True, device=dev)  # as training picks
    epoch = iter(range(10**9))
    t_aug = _seconds(lambda: aug.train(images, ids, next(epoch)), dev, args.repeats)
    step = _train_step(args.model, args.batch, args.out_size, dev, torch.bfloat16)
    t_step = _seconds(step, dev, args.repeats, rep_ms=2000)  # ~20+ steps of a ResNet-50 at batch 256
    rows.append(dict(device=name, impl=aug.impl, part="Augmenter.train", dtype="bfloat16", layout="channels_last",
                     images_per_s=args.batch / t_aug, ms_per_batch=1e3 * t_aug, model=args.model,
                     step_ms=1e3 * t_step, share_of_step=t_aug / (t_aug + t_step)))
    return rows


def _print(args, rows: list[dict]) -> None:
    print(f"augmentation {args.in_size}x{args.in_size} uint8 -> {args.out_size}, batch {args.batch}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    host = [r for r in rows if "threads" in r]
    if host:
        print(f"{'device':<8}{'impl':<26}{'threads':>8}{'images/s':>12}")
        for r in host:
            print(f"{r['device']:<8}{r['impl']:<26}{r['threads']:>8}{r['images_per_s']:>12.1f}")
    cpu = {(r["impl"], r["threads"]): r["images_per_s"] for r in host}
    for t in sorted({k[1] for k in cpu if k[0] == "reference"}):
        print(f"reference / PIL pipeline on decoded {args.in_size}px images, {t} thread(s): "
              f"{cpu[('reference', t)] / cpu[('pil+torchvision', t)]:.2f}x")
    for r in host:
        if r["impl"].startswith("reference-cache"):
            print(f"{r['impl']} / PIL decode+transforms of the photos ({r['megapixels']:.2f} MP mean), per core: "
                  f"{r['x_pil']:.1f}x (median of {r['rounds']} interleaved rounds)")
    kernels = [r for r in rows if r.get("part") == "kernel"]
    if kernels:
        print(f"{kernels[0]['device']}: device-to-device copy {kernels[0]['copy_gb_per_s']:.0f} GB/s (read + write)")
        print(f"{'impl':<11}{'dtype':<10}{'layout':<15}{'ms/batch':>10}{'images/s':>12}{'floor':>12}{'of floor':>10}")
        for r in kernels:
            print(f"{r['impl']:<11}{r['dtype']:<10}{r['layout']:<15}{r['ms_per_batch']:>10.3f}{r['images_per_s']:>12.0f}"
                  f"{r['floor_images_per_s']:>12.0f}{r['of_floor']:>9.1%}")
    for r in rows:
        if r.get("part") == "Augmenter.train":
            print(f"Augmenter.train ({r['impl']}, bf16 channels_last, params sampled on the host): {r['ms_per_batch']:.3f} ms; "
                  f"{r['model']} bf16 training step: {r['step_ms']:.2f} ms; augmentation = {r['share_of_step']:.2%} of the step")


@exit_on_user_error  # a mistake in the arguments or files: one line naming it, exit 2
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--in-size", type=int, default=256)
    ap.add_argument("--out-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--photos", type=Path,
                    help="manifest of JPEG photos (e.g. data/demo/manifest.csv) for the decode+augment comparison")
    ap.add_argument("--device", default="auto", help="device for the kernel/floor/training-step rows: auto (cuda if present), "
                    "cuda, cpu (Triton then needs TRITON_INTERPRET=1; for testing this script), none")
    ap.add_argument("--skip-host", action="store_true", help="skip the CPU reference vs PIL rows")
    ap.add_argument("--no-device-reference", dest="device_reference", action="store_false",
                    help="skip timing the PyTorch reference on the device")
    ap.add_argument("--model", default="resnet50",
                    help="torchvision model whose bf16 training step the augmentation is compared with")
    ap.add_argument("--copy-mib", type=int, default=1024, help="size of the device-to-device copy that measures bandwidth")
    args = ap.parse_args()
    cfg = AugmentConfig()  # default recipe: RRC + flip + jitter(0.4, 0.4, 0.4), no hue/gray/erase
    rows = [] if args.skip_host else bench_cpu(args, cfg)
    if args.photos:
        rows += bench_photos(args, cfg)
    device = ("cuda" if torch.cuda.is_available() else "none") if args.device == "auto" else args.device
    if device != "none":
        rows += bench_device(args, cfg, torch.device(device))
    _print(args, rows)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
