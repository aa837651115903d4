"""Write a small image + text + tabular dataset that needs no download.

    python tools/make_demo_data.py OUT_DIR [--train 480 --val 120 --test 120] [--captions K]

Photographic-looking JPEGs (smooth illumination, textured blobs, sensor noise)
of 0.3 to 2 megapixels, so decoding costs what real photos cost. The label is
(image tone: warm / cool) x (text mood: calm / stormy): each modality alone
reaches about 50% accuracy, fusion about 100%. Tabular fields are an age
(weakly tied to the tone) and a site category (noise).

``--captions K`` (retrieval data, ``data.group_captions: true``): K manifest rows
per photo instead of one, sharing its path, label and tabular fields, and other
photos: scenes whose captions say what a globally pooled image tower can see,
a background colour (three warm, three cool: the tone of the label) and one to
three objects of one colour and shape ("two white triangles on a blue
background"), 270 combinations, under the same illumination, texture and noise.
The mood word is not visible, so captions leave it out. Without the flag the
output is unchanged, byte for byte.
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
FILLER = ["photo", "taken", "near", "the", "river", "at", "dusk", "morning", "field", "hill", "street", "garden", "old",
          "house", "under", "sky", "with", "trees", "clouds", "and", "a"]
SITES = ["north", "south", "east", "west", "central"]
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (960, 1280), (1200, 900)]


def _photo(rng: np.random.Generator, warm: bool, size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = _backdrop(rng, warm, w, h)
    # a few soft blobs (objects)
    yy, xx = np.mgrid[0:h:4, 0:w:4]
    blobs = np.zeros(yy.shape + (3,), np.float32)
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(w, h)
        blobs += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-60, 60, 3)
    img += np.asarray(Image.fromarray(np.clip(blobs + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                      dtype=np.float32) - 128
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # sensor noise: makes JPEGs photo-sized
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _backdrop(rng: np.random.Generator, warm: bool, w: int, h: int) -> np.ndarray:
    """float32 [h, w, 3]: low-frequency illumination and scene structure, upsampled smoothly (like out-of-focus
    photos), tinted by the tone, plus mid-frequency texture."""
    base = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    tint = np.array([45, 15, -40] if warm else [-40, 5, 45], dtype=np.float32)
    base = np.clip(base * 0.7 + 60 + tint, 0, 255)
    img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
    tex = rng.normal(0, 18, (h // 16 + 1, w // 16 + 1, 1)).astype(np.float32)
    tex = np.asarray(Image.fromarray(np.clip(tex[..., 0] + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                     dtype=np.float32) - 128
    return img + tex[..., None]


# --- captioned scenes (--captions): what the captions say is what a globally pooled CNN can see ---------------

BACKGROUNDS = {True: {"red": (185, 55, 45), "orange": (225, 135, 45), "yellow": (215, 195, 70)},  # warm tone
               False: {"blue": (45, 80, 185), "green": (50, 145, 90), "purple": (120, 60, 165)}}  # cool tone
OBJECT_COLOURS = {"white": (242, 242, 238), "black": (22, 22, 26), "red": (215, 30, 30), "yellow": (245, 215, 25),
                  "blue": (30, 55, 225), "green": (35, 175, 55)}
CLASHES = {"orange": ("red", "yellow")}  # object colours too close to a background to tell apart (and its own)
SHAPES = {"circle": ("circle", "disc"), "square": ("square", "block"), "triangle": ("triangle",)}
COUNTS = {1: ("one", "a single", "a"), 2: ("two", "a pair of"), 3: ("three",)}


def _scene(rng: np.random.Generator, warm: bool, size: tuple[int, int]) -> tuple[Image.Image, dict]:
    """A photo-like scene: a background colour of the tone (with the photos' illumination and texture) and 1-3
    objects of one colour and shape inside the centre square (what the cache keeps), clear of the edges a
    random crop may cut; and those facts for the captions (6 backgrounds x 4-5 colours x 3 shapes x 3 counts)."""
    w, h = size
    bg = str(rng.choice(list(BACKGROUNDS[warm])))
    colours = [c for c in OBJECT_COLOURS if c != bg and c not in CLASHES.get(bg, ())]
    colour, shape, count = str(rng.choice(colours)), str(rng.choice(list(SHAPES))), int(rng.integers(1, 4))
    light = _backdrop(rng, warm, w, h)
    light = 0.8 * light.mean(2, keepdims=True) + 0.2 * light  # mostly brightness: the background keeps its colour name
    light = 0.75 + 0.5 * (light - light.mean()) / 255  # the backdrop as shading around 1
    img = np.asarray(BACKGROUNDS[warm][bg], np.float32) * light
    side = min(w, h)
    x0, y0 = (w - side) / 2, (h - side) / 2
    r = rng.uniform(0.09, 0.13) * side
    margin = r + 0.1 * side
    centres: list[tuple[float, float]] = []
    for _ in range(200):  # rejection: objects do not overlap
        c = (x0 + rng.uniform(margin, side - margin), y0 + rng.uniform(margin, side - margin))
        if all(np.hypot(c[0] - a, c[1] - b) > 2.3 * r for a, b in centres):
            centres.append(c)
            if len(centres) == count:
                break
    count = len(centres)  # (never short in practice; the caption says what was drawn)
    paint = np.asarray(OBJECT_COLOURS[colour], np.float32)
    for cx, cy in centres:  # drawn in the object's bounding box only (photos are up to 2 MP)
        xa, xb, ya, yb = int(cx - 1.3 * r), int(cx + 1.3 * r) + 1, int(cy - 1.3 * r), int(cy + 1.3 * r) + 1
        yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32)
        inside = _shape_depth(shape, xx - cx, yy - cy, r)  # > 0 inside, in pixels
        alpha = np.clip(inside / max(1.0, 0.01 * side) + 0.5, 0, 1)[..., None]  # soft edge of ~1% of the side
        box = (slice(ya, yb), slice(xa, xb))
        img[box] = img[box] * (1 - alpha) + paint * light[box] * alpha
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # sensor noise: makes JPEGs photo-sized
    facts = {"background": bg, "colour": colour, "shape": shape, "count": count}
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), facts


def _shape_depth(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance-like depth inside a circle / square / upward triangle of size ``r`` around (0, 0)."""
    if shape == "circle":
        return r - np.hypot(dx, dy)
    if shape == "square":
        return 0.85 * r - np.maximum(np.abs(dx), np.abs(dy))
    # equilateral triangle, apex up (image y grows downwards), inradius 0.6 r: within each edge's half-plane
    ri, k = 0.6 * r, np.sqrt(3) / 2
    return np.minimum(ri - dy, np.minimum(ri + k * dx + 0.5 * dy, ri - k * dx + 0.5 * dy))


CAPTIONS = [
    "{count} {colour} {shapes} on {a_bg} background",
    "{a_bg} background with {count} {colour} {shapes}",
    "{count} {colour} {shapes} against {a_bg} backdrop",
    "a photo of {count} {colour} {shapes} on {bg}",
    "{a_bg} surface with {count} {colour} {shapes} on it",
    "{bg} behind {count} {colour} {shapes}",
]


def _captions(rng: np.random.Generator, facts: dict, k: int) -> list[str]:
    """``k`` descriptions of one scene (templates in a seeded order, synonyms drawn), all different as long as
    templates x synonyms allow (a manifest check reports identical rows)."""
    order = [CAPTIONS[i] for i in rng.permutation(len(CAPTIONS))]
    bg, n = facts["background"], facts["count"]
    out: list[str] = []
    for j in range(k):
        for _ in range(20):  # redraw the synonyms of a caption this photo already has
            noun = str(rng.choice(SHAPES[facts["shape"]]))
            words = {"count": str(rng.choice(COUNTS[n])), "colour": facts["colour"],
                     "shapes": noun if n == 1 else noun + "s", "bg": bg,
                     "a_bg": ("an " if bg[0] in "aeiou" else "a ") + bg}
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
    photo, facts = _scene(rng, warm, size) if captions else (_photo(rng, warm, size), None)
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
