"""Write a small image + text + tabular dataset that needs no download.

    python tools/make_demo_data.py OUT_DIR [--train 480 --val 120 --test 120]

Photographic-looking JPEGs (smooth illumination, textured blobs, sensor noise)
of 0.3 to 2 megapixels, so decoding costs what real photos cost. The label is
(image tone: warm / cool) x (text mood: calm / stormy): each modality alone
reaches about 50% accuracy, fusion about 100%. Tabular fields are an age
(weakly tied to the tone) and a site category (noise).
"""
from __future__ import annotations

import argparse
import csv
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

CALM = ["calm", "quiet", "gentle", "still", "peaceful", "serene", "mild", "soft"]
STORMY = ["stormy", "loud", "wild", "chaotic", "violent", "furious", "raging", "turbulent"]
FILLER = ["photo", "taken", "near", "the", "river", "at", "dusk", "morning", "field", "hill", "street", "garden", "old", "house", "under", "sky", "with", "trees", "clouds", "and", "a"]
SITES = ["north", "south", "east", "west", "central"]
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (960, 1280), (1200, 900)]


def _photo(rng: np.random.Generator, warm: bool, size: tuple[int, int]) -> Image.Image:
    w, h = size
    # low-frequency illumination and scene structure, upsampled smoothly (like out-of-focus photos)
    base = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    tint = np.array([45, 15, -40] if warm else [-40, 5, 45], dtype=np.float32)
    base = np.clip(base * 0.7 + 60 + tint, 0, 255)
    img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
    # mid-frequency texture
    tex = rng.normal(0, 18, (h // 16 + 1, w // 16 + 1, 1)).astype(np.float32)
    tex = np.asarray(Image.fromarray(np.clip(tex[..., 0] + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float32) - 128
    img += tex[..., None]
    # a few soft blobs (objects)
    yy, xx = np.mgrid[0:h:4, 0:w:4]
    blobs = np.zeros(yy.shape + (3,), np.float32)
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(w, h)
        blobs += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-60, 60, 3)
    img += np.asarray(Image.fromarray(np.clip(blobs + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float32) - 128
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # sensor noise: makes JPEGs photo-sized
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _text(rng: np.random.Generator, stormy: bool) -> str:
    words = list(rng.choice(FILLER, size=rng.integers(6, 12)))
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(STORMY if stormy else CALM)))
    return " ".join(words)


def _make(args) -> dict:
    out, i, split, seed, sizes = args
    rng = np.random.default_rng([seed, i])
    warm, stormy = bool(rng.integers(2)), bool(rng.integers(2))
    size = sizes[rng.integers(len(sizes))]
    rel = f"images/{split}/{i:05d}.jpg"
    _photo(rng, warm, size).save(out / rel, quality=90)
    return {
        "image": rel,
        "text": _text(rng, stormy),
        "age": round(float(rng.normal(52 if warm else 44, 12)), 1),
        "site": str(rng.choice(SITES)),
        "label": f"{'warm' if warm else 'cool'}_{'stormy' if stormy else 'calm'}",
        "split": split,
    }


def make_demo_data(out: Path, n_train: int = 480, n_val: int = 120, n_test: int = 120, seed: int = 0, workers: int = 0,
                   sizes: list[tuple[int, int]] = SIZES) -> Path:
    """Write the data set under ``out``; ``sizes`` are the photo sizes drawn from (tests pass thumbnails)."""
    out = Path(out)
    jobs = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(out, len(jobs) + k, split, seed, sizes) for k in range(n)]  # image index runs on across splits
    with Pool(workers or None) as pool:
        rows = list(tqdm(pool.imap(_make, jobs, chunksize=4), total=len(jobs), desc="demo images", unit="img"))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=480)
    ap.add_argument("--val", type=int, default=120)
    ap.add_argument("--test", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    manifest = make_demo_data(a.out_dir, a.train, a.val, a.test, a.seed)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
