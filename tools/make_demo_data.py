"""Write a small image + text + tabular dataset that needs no download.

    python tools/make_demo_data.py OUT_DIR [--train 480 --val 120 --test 120] [--captions K]

Photographic-looking JPEGs (smooth illumination, textured blobs, sensor noise)
of 0.3 to 2 megapixels, so decoding costs what real photos cost. The label is
(image tone: warm / cool) x (text mood: calm / stormy): each modality alone
reaches about 50% accuracy, fusion about 100%. Tabular fields are an age
(weakly tied to the tone) and a site category (noise).

``--captions K`` (retrieval data, ``data.group_captions: true``): K manifest rows
per photo instead of one, sharing its path, label and tabular fields, whose
texts describe what the photo shows: its tone, how many soft blobs it has, and
the strongest blob inside the centre square (what the cache keeps): bright or
dark, its hue, where it sits. The mood word is not visible, so captions leave it
out. Without the flag the output is unchanged, byte for byte.
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
    return _photo_and_facts(rng, warm, size)[0]


def _photo_and_facts(rng: np.random.Generator, warm: bool, size: tuple[int, int]) -> tuple[Image.Image, dict]:
    """The photo, and what a caption can say about it (from the same draws: the random stream is unchanged)."""
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
    drawn = []
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(w, h)
        colour = rng.uniform(-60, 60, 3)
        blobs += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * colour
        drawn.append((cy, cx, r, colour))
    img += np.asarray(Image.fromarray(np.clip(blobs + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float32) - 128
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # sensor noise: makes JPEGs photo-sized
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), _facts(warm, drawn, w, h)


def _facts(warm: bool, blobs: list, w: int, h: int) -> dict:
    """Tone, blob count, and the strongest blob (radius x colour strength) in the centre square."""
    side = min(w, h)
    x0, y0 = (w - side) / 2, (h - side) / 2
    inside = [(r * float(np.abs(c).sum()), (cx - x0) / side, (cy - y0) / side, c) for cy, cx, r, c in blobs
              if 0 <= cx - x0 < side and 0 <= cy - y0 < side]
    facts = {"warm": warm, "count": len(blobs), "blob": None}
    if inside:
        _, u, v, c = max(inside, key=lambda t: t[0])
        vert, horiz = ["top", "", "bottom"][min(int(v * 3), 2)], ["left", "", "right"][min(int(u * 3), 2)]
        facts["blob"] = {"bright": bool(c.mean() > 0), "hue": ["reddish", "greenish", "bluish"][int(np.argmax(c - c.mean()))],
                         "where": " ".join(p for p in (vert, horiz) if p) or "centre"}
    return facts


TONE = {True: ["warm", "orange tinted", "golden"], False: ["cool", "blue tinted", "cold"]}
COUNT = {2: "two", 3: "three", 4: "four", 5: "five"}
THINGS = {"spots": "spot", "blobs": "blob", "patches": "patch", "shapes": "shape"}
WITH_BLOB = [
    "a {bright} {hue} {thing} in the {where} of {a_tone} scene",
    "{tone} light and a {bright} {hue} {thing} near the {where}",
    "{count} blurry {things} on {a_tone} background, the strongest one {bright} and {hue} at the {where}",
]
WITHOUT_BLOB = [
    "{a_tone} photo with {count} soft {things}",
    "an out of focus {tone} picture showing {count} {things}",
    "{count} faint {things} in {a_tone} blur",
]


def _captions(rng: np.random.Generator, facts: dict, k: int) -> list[str]:
    """``k`` descriptions of one photo (templates in a seeded order, synonyms drawn), all different as long as
    templates x synonyms allow (a manifest check reports identical rows)."""
    templates = WITHOUT_BLOB + (WITH_BLOB if facts["blob"] else [])
    order = [templates[i] for i in rng.permutation(len(templates))]
    out: list[str] = []
    for j in range(k):
        for _ in range(20):  # redraw the synonyms of a caption this photo already has
            things, tone = str(rng.choice(list(THINGS))), str(rng.choice(TONE[facts["warm"]]))
            words = {"tone": tone, "a_tone": ("an " if tone[0] in "aeiou" else "a ") + tone,
                     "count": COUNT[facts["count"]], "things": things, "thing": THINGS[things]}
            if facts["blob"]:
                words.update(bright="bright" if facts["blob"]["bright"] else "dark", hue=facts["blob"]["hue"],
                             where=facts["blob"]["where"])
            text = order[j % len(order)].format(**words)
            if text not in out:
                break
        out.append(text)
    return out


def _text(rng: np.random.Generator, stormy: bool) -> str:
    words = list(rng.choice(FILLER, size=rng.integers(6, 12)))
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(STORMY if stormy else CALM)))
    return " ".join(words)


def _make(args) -> list[dict]:
    out, i, split, seed, sizes, captions = args
    rng = np.random.default_rng([seed, i])
    warm, stormy = bool(rng.integers(2)), bool(rng.integers(2))
    size = sizes[rng.integers(len(sizes))]
    rel = f"images/{split}/{i:05d}.jpg"
    photo, facts = _photo_and_facts(rng, warm, size)
    photo.save(out / rel, quality=90)
    row = {
        "image": rel,
        "text": _text(rng, stormy),
        "age": round(float(rng.normal(52 if warm else 44, 12)), 1),
        "site": str(rng.choice(SITES)),
        "label": f"{'warm' if warm else 'cool'}_{'stormy' if stormy else 'calm'}",
        "split": split,
    }
    if not captions:
        return [row]
    texts = _captions(np.random.default_rng([seed, i, 0xCA97]), facts, captions)  # its own stream
    return [{**row, "text": t} for t in texts]


def make_demo_data(out: Path, n_train: int = 480, n_val: int = 120, n_test: int = 120, seed: int = 0, workers: int = 0,
                   sizes: list[tuple[int, int]] = SIZES, captions: int = 0) -> Path:
    """Write the data set under ``out``; ``sizes`` are the photo sizes drawn from (tests pass thumbnails);
    ``captions`` > 0 writes that many caption rows per photo (see the module doc)."""
    out = Path(out)
    jobs = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(out, len(jobs) + k, split, seed, sizes, captions) for k in range(n)]  # image index runs on across splits
    with Pool(workers or None) as pool:
        per_image = list(tqdm(pool.imap(_make, jobs, chunksize=4), total=len(jobs), desc="demo images", unit="img"))
    rows = [row for image_rows in per_image for row in image_rows]
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
    ap.add_argument("--captions", type=int, default=0, help="caption rows per photo (0: one row with the mood text)")
    a = ap.parse_args()
    manifest = make_demo_data(a.out_dir, a.train, a.val, a.test, a.seed, captions=a.captions)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
