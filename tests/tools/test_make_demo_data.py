"""The demo data set: photo-sized JPEGs, and labels that need both the image and the text."""
import csv

import numpy as np
from make_demo_data import CALM, STORMY, make_demo_data
from PIL import Image


def test_demo_data_is_photo_sized_and_label_needs_both_modalities(tmp_path):
    manifest = make_demo_data(tmp_path, n_train=12, n_val=4, n_test=4, seed=3, workers=2)
    rows = list(csv.DictReader(open(manifest)))
    assert [r["split"] for r in rows].count("train") == 12 and len(rows) == 20
    tones, moods = set(), set()
    for r in rows:
        im = Image.open(tmp_path / r["image"])
        assert im.format == "JPEG" and 0.3e6 <= im.size[0] * im.size[1] <= 2.0e6
        tone, mood = r["label"].split("_")
        words = set(r["text"].split())
        assert bool(words & set(STORMY)) == (mood == "stormy") and bool(words & set(CALM)) == (mood == "calm")
        rgb = np.asarray(im.reduce(8), dtype=np.float32)
        assert (rgb[..., 0].mean() > rgb[..., 2].mean()) == (tone == "warm")  # the tone is in the pixels
        tones.add(tone)
        moods.add(mood)
        float(r["age"])
        assert r["site"]
    assert tones == {"warm", "cool"} and moods == {"calm", "stormy"}


def test_same_seed_same_data(tmp_path):
    a = make_demo_data(tmp_path / "a", 4, 2, 2, seed=1, workers=1)
    b = make_demo_data(tmp_path / "b", 4, 2, 2, seed=1, workers=1)
    assert a.read_text() == b.read_text()
    assert (a.parent / "images/train/00000.jpg").read_bytes() == (b.parent / "images/train/00000.jpg").read_bytes()


def test_make_demo_data_is_made_once_per_arguments(tmp_path):
    """`make demo` regenerates the photos only when its arguments or the generator changed (a stamp beside them)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "demo"

    def make(args: str) -> str:  # -o: never (re)install the venv from here
        return subprocess.run(["make", "-s", "-o", ".venv/.installed", "demo-data", f"DEMO_DATA={out}",
                               f"DEMO_DATA_ARGS={args}"], cwd=root, capture_output=True, text=True, check=True).stdout

    make("--train 4 --val 2 --test 2")
    first = (out / "manifest.csv").stat().st_mtime_ns
    assert "up to date" in make("--train 4 --val 2 --test 2")
    assert (out / "manifest.csv").stat().st_mtime_ns == first
    assert "up to date" not in make("--train 4 --val 2 --test 2 --seed 1")  # other arguments: made again
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 8 and (out / "manifest.csv").stat().st_mtime_ns != first
