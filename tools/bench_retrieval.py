"""Retrieval evaluation cost, and the cache loader with several captions per image (a script, not a test).

    python tools/bench_retrieval.py [--images 100000 --per-image 5 --dim 256 --dtype fp32 bf16]
                                    [--budget-s 180] [--dense-images 4000] [--full] [--json OUT]
    python tools/bench_retrieval.py --loaders [--loader-images 1500 --loader-batches 300] [--json OUT]

Retrieval (``engine.training.retrieval_metrics.retrieval_metrics``) on synthetic unit
embeddings, each caption near its image, ``--per-image`` captions per image:

  dense     the reference: the full [Ni, Nt] score matrix in one matmul, ranks counted on it
            (what a naive evaluation holds in memory), at --dense-images images
  blocked   the same size through retrieval_metrics; the ranks must agree with dense
  slice     m images x ALL Nt = images x per-image captions (the full problem's block
            shape and caption count, a share m / images of its image blocks), at two m; the
            full size is extrapolated linearly in m (the cost is exactly blocks x block cost,
            plus the per-caption set-up the fit's intercept takes) -- labelled "extrapolated"
  full      with --full: the whole images x captions problem, timed (instead of the slices)

Memory: peak RSS during the call above what the inputs already held (VmHWM, reset
through /proc/self/clear_refs before each call; ru_maxrss where that is refused).

--loaders: the cache loader on demo photos with five captions per image (data.group_captions)
against the same photos with one caption per image (a plain cache), images/s over the train
split in training order (one caption drawn per image) and in evaluation order (every batch
carries all five), interleaved repeats; the ratio is the median of each repeat's ratio, in images per
wall-clock second and per CPU second of the process (what the loader costs, whatever else runs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --- memory ---------------------------------------------------------------------------------------------


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measured(fn):
    """(result, seconds, peak MiB above the RSS at the start)."""
    rss0 = _status_mib("VmRSS")
    exact = _reset_peak()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = _status_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out, dt, peak - rss0


# --- retrieval --------------------------------------------------------------------------------------------


def embeddings(ni: int, nt: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Unit image and caption embeddings, caption t near image text_image[t] (each image gets nt // ni)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(ni, dim, generator=g), dim=1)
    own = torch.arange(nt) % ni
    own = own[torch.randperm(nt, generator=g)]
    txt = torch.empty(nt, dim)
    for a in range(0, nt, 65536):  # in blocks: no second [nt, dim] temporary
        b = min(a + 65536, nt)
        txt[a:b] = torch.nn.functional.normalize(img[own[a:b]] + 1.2 * torch.randn(b - a, dim, generator=g) / dim ** 0.5, dim=1)
    return img, txt, own.numpy()


def dense_ranks(img: torch.Tensor, txt: torch.Tensor, own: np.ndarray, dtype: torch.dtype):
    """The whole score matrix at once; same rank definition (ties by lower index) as retrieval_ranks."""
    i, t = img.to(dtype), txt.to(dtype)
    s = i @ t.T  # [Ni, Nt]
    own_t = torch.from_numpy(own)
    cols = torch.arange(len(own))
    pos = s[own_t, cols]
    t2i = 1 + (s > pos[None, :]).sum(0) + ((s == pos[None, :]) & (torch.arange(len(img))[:, None] < own_t[None, :])).sum(0)
    best = torch.full((len(img),), -float("inf"), dtype=dtype).scatter_reduce(0, own_t, pos, reduce="amax")
    first = torch.full((len(img),), len(own), dtype=torch.long)
    at = pos == best[own_t]
    first = first.scatter_reduce(0, own_t[at], cols[at], reduce="amin")
    i2t = 1 + (s > best[:, None]).sum(1) + ((s == best[:, None]) & (cols[None, :] < first[:, None])).sum(1)
    return i2t.numpy(), t2i.numpy()


def bench_retrieval(a) -> list[dict]:
    from engine.training.retrieval_metrics import retrieval_metrics, retrieval_ranks

    rows = []
    nt_full = a.images * a.per_image
    for name in a.dtype:
        dtype = DTYPES[name]
        kw = dict(chunk=a.chunk, text_chunk=a.text_chunk, dtype=dtype)
        # dense reference vs blocked, at a size the dense matrix fits
        ni = a.dense_images
        img, txt, own = embeddings(ni, ni * a.per_image, a.dim)
        (dense, t_dense, m_dense) = measured(lambda: dense_ranks(img, txt, own, dtype))
        (blocked, t_blk, m_blk) = measured(lambda: retrieval_ranks(img, txt, own, **kw))
        agree = float(np.mean(np.concatenate([dense[0] == blocked[0], dense[1] == blocked[1]])))
        pairs = ni * ni * a.per_image
        rows.append(dict(what="dense", dtype=name, images=ni, captions=len(own), seconds=t_dense, peak_mib=m_dense,
                         mpairs_s=pairs / t_dense / 1e6, note="full score matrix"))
        rows.append(dict(what="blocked", dtype=name, images=ni, captions=len(own), seconds=t_blk, peak_mib=m_blk,
                         mpairs_s=pairs / t_blk / 1e6, note=f"ranks equal to dense: {agree:.4%}"))
        print(_fmt(rows[-2]), _fmt(rows[-1]), sep="\n", flush=True)
        del img, txt, own, dense, blocked
        # slices of the full problem: m images x all nt_full captions, at two m; linear fit in m (--full: the
        # whole problem is timed instead)
        img_all, txt_all, own_all = embeddings(a.images, nt_full, a.dim)
        probe = []
        for m in ([] if a.full else _slice_sizes(a, dtype, img_all, txt_all, own_all, kw)):
            own_m = own_all % m  # every caption belongs to one of the m images: same block shapes and count
            metrics, t, mem = measured(lambda: retrieval_metrics(img_all[:m], txt_all, own_m, **kw))
            probe.append((m, t))
            rows.append(dict(what="slice", dtype=name, images=m, captions=nt_full, seconds=t, peak_mib=mem,
                             mpairs_s=m * nt_full / t / 1e6, note="measured"))
            print(_fmt(rows[-1]), flush=True)
        if probe:
            (m1, t1), (m2, t2) = probe[-2:]
            rate = (t2 - t1) / (m2 - m1)
            est = t1 + rate * (a.images - m1)
            scaled = t2 * a.images / m2  # the larger slice scaled, set-up included: an upper bound when timings are steady
            rows.append(dict(what="full (extrapolated)", dtype=name, images=a.images, captions=nt_full, seconds=est,
                             peak_mib=rows[-1]["peak_mib"], mpairs_s=a.images * nt_full / est / 1e6,
                             note=f"linear in images from the slices at {m1} and {m2} (set-up {t1 - rate * m1:.1f} s); "
                                  f"the {m2} slice scaled: {scaled:,.0f} s"))
            print(_fmt(rows[-1]), flush=True)
        else:
            metrics, t, mem = measured(lambda: retrieval_metrics(img_all, txt_all, own_all, **kw))
            rows.append(dict(what="full", dtype=name, images=a.images, captions=nt_full, seconds=t, peak_mib=mem,
                             mpairs_s=a.images * nt_full / t / 1e6,
                             note=f"i2t_r1 {metrics['i2t_r1']:.3f} t2i_r1 {metrics['t2i_r1']:.3f}"))
            print(_fmt(rows[-1]), flush=True)
        del img_all, txt_all, own_all
    return rows


def _slice_sizes(a, dtype, img, txt, own, kw) -> list[int]:
    """Two image counts (multiples of the block) whose runs together take about --budget-s."""
    from engine.training.retrieval_metrics import retrieval_ranks

    m0 = a.chunk
    t0 = time.perf_counter()
    retrieval_ranks(img[:m0], txt, own % m0, **kw)
    per_block = time.perf_counter() - t0  # an upper bound: includes the set-up
    blocks = max(2, int(a.budget_s / per_block / 3))  # runs of k and 2k blocks: 3k blocks in all
    k = min(blocks, max(1, a.images // a.chunk // 2))
    return [k * a.chunk, 2 * k * a.chunk]


def _fmt(r: dict) -> str:
    return (f"{r['what']:<20} {r['dtype']:<5} {r['images']:>8,} x {r['captions']:>8,} {r['seconds']:>10.1f} s "
            f"{r['peak_mib']:>9,.0f} MiB {r['mpairs_s']:>9,.0f} Mpairs/s  {r['note']}")


# --- cache loader with captions ------------------------------------------------------------------------------


def bench_loaders(a) -> list[dict]:
    import csv

    from make_demo_data import make_demo_data

    from engine.config import load_config
    from engine.data.cache import build_cache
    from engine.data.context import DataContext
    from engine.data.loaders import create_loader

    root = Path(a.workdir or tempfile.mkdtemp(prefix="bench_retrieval_"))
    five = root / "data" / "manifest.csv"
    if not five.is_file():
        make_demo_data(root / "data", a.loader_images, a.loader_images // 4, 0, sizes=[(320, 240), (240, 320)], captions=5)
    one = root / "data" / "one_caption.csv"
    with open(five, newline="") as f:
        rows = list(csv.DictReader(f))
    firsts = list({r["image"]: r for r in reversed(rows)}.values())[::-1]  # the first caption row of each image
    with open(one, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(firsts)
    common = [f"--cache.dir={root / 'cache'}", "--data.numeric_columns=[age]", "--data.categorical_columns=[site]",
              "--model.text_encoder=minilm", "--model.text_max_length=32", "--cache.stored_size=128",
              "--loader.backend=cache", f"--loader.batch_size={a.loader_batch}", "--loader.num_workers=2"]
    setups = {"1 caption/image": [f"--data.manifest={one}"],
              "5 captions/image": [f"--data.manifest={five}", "--data.group_captions=true"]}
    loaders = {}
    for name, extra in setups.items():
        cfg = load_config(None, common + extra)
        ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length)
        for split in ("train", "val"):
            build_cache(cfg, ctx, split, progress=False)
        # the train split both ways: training order (one drawn caption) and evaluation order (all captions)
        loaders[name] = {"train": create_loader(cfg, ctx, "train", True), "eval": create_loader(cfg, ctx, "train", False)}
    rates: dict = {}  # (setup, order) -> [(images per wall second, images per CPU second), ...]
    for rep in range(a.repeats):  # interleaved (ABBA), so drifting load and going first hit both alike
        for order in ("train", "eval"):
            for name in (list(setups) if rep % 2 == 0 else list(setups)[::-1]):
                rates.setdefault((name, order), []).append(_images_per_s(loaders[name][order], a.loader_batches))
    out = []
    for (name, order), r in rates.items():
        wall, cpu = np.array(r).T
        out.append(dict(what=f"cache loader, {name}", order=order, images_per_s=float(np.median(wall)),
                        images_per_cpu_s=float(np.median(cpu)), runs=[round(x) for x in wall],
                        cpu_runs=[round(x) for x in cpu], batch=a.loader_batch))
        print(f"{out[-1]['what']:<34} {order:<6} median {out[-1]['images_per_s']:>10,.0f} images/s "
              f"{out[-1]['images_per_cpu_s']:>10,.0f} images/CPU-s  runs {out[-1]['runs']}")
    for order in ("train", "eval"):
        five, one = np.array(rates[("5 captions/image", order)]), np.array(rates[("1 caption/image", order)])
        for k, unit in enumerate(("wall", "cpu")):
            pairs = five[:, k] / one[:, k]
            out.append(dict(what=f"5 captions / 1 caption ({unit})", order=order, median_ratio=float(np.median(pairs)),
                            ratios=[round(float(x), 3) for x in pairs]))
            print(f"{order}: 5 captions / 1 caption, {unit} time: median of the {len(pairs)} repeats' ratios = "
                  f"{np.median(pairs):.3f} (quartiles {np.percentile(pairs, 25):.3f} / {np.percentile(pairs, 75):.3f})")
    return out


def _images_per_s(loader, batches: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process, all its threads): on a machine
    shared with other jobs the second is what the loader itself costs, the first also what others took."""
    done, images, t0, c0 = 0, 0, None, None
    while done <= batches:
        for b in loader:
            if done == 1:  # the first batch starts the threads: not timed
                t0, c0 = time.perf_counter(), time.process_time()
            elif done > 1:
                images += b.size
            done += 1
            if done > batches:
                break
    return images / (time.perf_counter() - t0), images / (time.process_time() - c0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--per-image", type=int, default=5, help="captions per image")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--chunk", type=int, default=256, help="images per block")
    p.add_argument("--text-chunk", type=int, default=8192, help="captions per block")
    p.add_argument("--dense-images", type=int, default=4000, help="size of the dense-matrix comparison")
    p.add_argument("--budget-s", type=float, default=180, help="seconds for the two slices per dtype")
    p.add_argument("--full", action="store_true", help="run the whole problem (instead of slices and extrapolation)")
    p.add_argument("--loaders", action="store_true", help="the cache loader with 5 vs 1 captions per image instead")
    p.add_argument("--loader-images", type=int, default=1500, help="train photos (val: a quarter)")
    p.add_argument("--loader-batch", type=int, default=64)
    p.add_argument("--loader-batches", type=int, default=150, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--workdir", help="keep the demo data and caches here (default: a new temporary folder)")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = bench_loaders(a) if a.loaders else bench_retrieval(a)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
