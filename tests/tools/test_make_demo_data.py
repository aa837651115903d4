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
