"""Benchmark the cache builder's decoders on the same photos (not a test: prints a table, optionally writes JSON).

Pillow (``decode_resized``, what each build process runs) on one core, with and
without the DCT draft; DALI's CPU decoder on one thread (per core); on a CUDA
card DALI's ``mixed`` decode (nvJPEG) with the hardware decoder off and, on
A100/H100/H200, on (``hw_decoder_load``). Each row decodes every photo to the
cache's stored form (``cache.stored_size``, ``cache.resize_policy``) and says how
far its records are from Pillow's full decode (mean |difference|).

    python tools/bench_decode.py --manifest data/demo/manifest.csv [--size 256] [--policy crop] [--limit 200]
                                 [--device auto|cpu|cuda] [--threads 4] [--json OUT]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from engine.errors import exit_on_user_error  # noqa: E402


def photos(manifest: Path, limit: int) -> list[str]:
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return [str(manifest.parent / r["image"]) for r in rows[:limit]]


def timed(decode, paths: list[str]) -> tuple[float, list[np.ndarray]]:
    decode(paths[:2])  # warm-up: DALI builds its pipeline, the page cache holds the files
    t0 = time.perf_counter()
    out = decode(paths)
    return time.perf_counter() - t0, out


@exit_on_user_error  # config, manifest or cache problems: one line naming the key/file/row, exit 2
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True, help="CSV manifest with an 'image' column (the demo's)")
    ap.add_argument("--size", type=int, default=256, help="cache.stored_size")
    ap.add_argument("--policy", default="crop", choices=["crop", "pad"])
    ap.add_argument("--limit", type=int, default=200, help="photos to decode")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="DALI threads for the mixed rows")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not args.manifest.is_file():
        from engine.errors import ConfigError

        raise ConfigError(f"--manifest {args.manifest}: no such file (a CSV manifest with an 'image' column)")

    import torch

    from engine import hardware
    from engine.data.cache.decode_dali import DaliDecoder, chunk_decoder

    paths = photos(args.manifest, args.limit)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    rows, reference = [], None
    cases = [("pil", "draft", 1, chunk_decoder({"decoder": "pil"}, args.size, args.policy, True)),
             ("pil", "full", 1, chunk_decoder({"decoder": "pil"}, args.size, args.policy, False)),
             ("dali-cpu", "", 1, DaliDecoder(args.size, args.policy, "cpu", threads=1, draft=False))]
    if cuda:
        cases.append(("dali-mixed", "hw 0", args.threads, DaliDecoder(args.size, args.policy, "mixed", 0.0, args.threads)))
        hw = hardware.dali_decoder_defaults(hardware.device_info())["hw_decoder_load"]
        if hw:
            cases.append(("dali-mixed", f"hw {hw:g}", args.threads,
                          DaliDecoder(args.size, args.policy, "mixed", hw, args.threads)))
    for name, variant, threads, decode in cases:
        seconds, out = timed(decode, paths)
        bad = [o for o in out if not isinstance(o, np.ndarray)]
        images = [o.astype(np.int16) for o in out if isinstance(o, np.ndarray)]
        if name == "pil" and variant == "full":
            reference = images
        rows.append({"decoder": name, "variant": variant, "threads": threads, "photos": len(paths),
                     "errors": len(bad), "seconds": seconds, "images_per_s": len(paths) / seconds,
                     "images_per_s_per_thread": len(paths) / seconds / threads, "images": images})
    for r in rows:
        imgs = r.pop("images")
        r["mean_abs_vs_pil_full"] = (float(np.mean([np.abs(a - b).mean() for a, b in zip(imgs, reference)]))
                                     if reference is not None and len(imgs) == len(reference) else None)
    print(f"{len(paths)} photos from {args.manifest} -> {args.size} px {args.policy}, {hardware.device_info().name}")
    print(f"{'decoder':12} {'variant':8} {'threads':>7} {'img/s':>9} {'img/s/thread':>13} {'|d| vs pil full':>16}")
    for r in rows:
        d = r["mean_abs_vs_pil_full"]
        print(f"{r['decoder']:12} {r['variant']:8} {r['threads']:7d} {r['images_per_s']:9.1f} "
              f"{r['images_per_s_per_thread']:13.1f} {'' if d is None else f'{d:.3f}':>16}")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "policy": args.policy, "device": hardware.device_info().name,
                                         "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
