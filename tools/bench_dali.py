"""Benchmark the DALI loader against the PIL reference loader on the same data (not a test).

Each backend serves whole training epochs of the run config's train split
(decode + random resized crop + flip + jitter + normalise, float NCHW out);
images/s is the median over ``--epochs`` epochs after one warm-up epoch (which
also warms the page cache). Pipeline (re)building is inside the timing, as in
training. Prints a table; ``--json`` writes the figures.

    python tools/bench_dali.py --config configs/demo.yaml --data.manifest=/tmp/demo/manifest.csv [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _epoch_rate(loader, epoch: int) -> float:
    loader.set_epoch(epoch)
    n, t = 0, time.perf_counter()
    for batch in loader:
        n += batch.size
    return n / (time.perf_counter() - t)


def bench_backend(cfg, ctx, backend: str, epochs: int) -> dict:
    from dataclasses import replace

    from engine.data.loaders import create_loader

    run_cfg = replace(cfg, loader=replace(cfg.loader, backend=backend))
    loader = create_loader(run_cfg, ctx, "train", True)
    _epoch_rate(loader, 0)  # warm-up: page cache, thread pools, allocator
    rates = [_epoch_rate(loader, e) for e in range(1, epochs + 1)]
    return {"images_per_s": statistics.median(rates), "rates": rates, "batches": len(loader)}


# name -> (loader.backend, description); mirrors tools/bench_loaders.py's registry so it can move there
BACKENDS = {
    "pil": ("pil", "PIL decode + torchvision, DataLoader workers"),
    "dali_cpu": ("dali", "DALI file reader + CPU decode/augment"),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per backend (after one warm-up)")
    ap.add_argument("--only", nargs="*", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--json", type=Path, default=None)
    args, overrides = ap.parse_known_args(argv)

    from engine.config import load_config
    from engine.data.dataset import DataContext

    cfg = load_config(args.config, overrides)
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length)
    n = len(ctx.split("train"))
    results = {}
    for name in args.only:
        results[name] = bench_backend(cfg, ctx, BACKENDS[name][0], args.epochs)
    head = (f"loaders: train split {n} images -> {cfg.data.image_size}px, batch {cfg.loader.batch_size}, "
            f"num_workers {cfg.loader.num_workers}, {platform.machine()}, {os.cpu_count()} cores")
    print(head)
    print(f"{'backend':<10} {'images/s':>9} {'per-epoch':>28}  what")
    for name, r in results.items():
        print(f"{name:<10} {r['images_per_s']:>9.1f} {' '.join(f'{x:.0f}' for x in r['rates']):>28}  {BACKENDS[name][1]}")
    if "pil" in results and "dali_cpu" in results:
        print(f"dali_cpu / pil: {results['dali_cpu']['images_per_s'] / results['pil']['images_per_s']:.2f}x")
    out = {"header": head, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
