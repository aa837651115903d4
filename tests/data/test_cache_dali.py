"""cache.decoder=dali on CPU (DALI's CPU operators, device_id=None): the records match the Pillow path's within
``decode_dali.TOLERANCE`` for both resize policies, special files and the rejects report are the Pillow path's
own, a build killed mid-way resumes byte-identically, and ``auto`` picks by the card."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import hardware
from engine.data.cache import build_cache, open_cache
from engine.data.cache.decode_dali import TOLERANCE, DaliDecoder
from tests.data.conftest import make_cfg, make_ctx, write_dataset
from tests.data.test_cache import (REPO, _bad_files, _solid_jpeg_cmyk, _tree_bytes, resume_and_build_whole,
                                   sigkill_mid_build)

pytest.importorskip("nvidia.dali")


def _photos(root: Path) -> list[dict]:
    """Textured JPEGs (noise + gradients: what IDCT and resampling differences show on), EXIF-rotated, greyscale,
    and files DALI leaves to Pillow (CMYK JPEG, PNG with alpha)."""
    rng = np.random.default_rng(1)
    (root / "photo").mkdir(parents=True)
    names = []
    for i, (w, h) in enumerate([(300, 200), (160, 240), (257, 255)]):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1) + rng.integers(-20, 20, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "photo" / f"{i}.jpg", quality=90)
        names.append(f"{i}.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(root / "photo" / "0.jpg").save(root / "photo" / "exif.jpg", quality=90, exif=exif)
    Image.open(root / "photo" / "1.jpg").convert("L").save(root / "photo" / "gray.jpg", quality=90)
    _solid_jpeg_cmyk(root / "photo" / "cmyk.jpg")
    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (0, 0, 64, 24))
    rgba.save(root / "photo" / "rgba.png")
    names += ["exif.jpg", "gray.jpg", "cmyk.jpg", "rgba.png"]
    return [{"image": f"photo/{n}", "text": n, "age": "3", "site": "b", "label": "eel", "split": "train"} for n in names]


def _records(cfg) -> np.ndarray:
    reader = open_cache(cfg, make_ctx(cfg), "train")
    return np.stack([reader.record(i) for i in range(reader.count)]).astype(int)


@pytest.mark.parametrize("policy,draft", [("crop", True), ("pad", True), ("crop", False)])
def test_dali_records_match_pil_within_tolerance(tmp_path, policy, draft):
    root = tmp_path / "data"
    write_dataset(root)
    manifest = write_dataset(root, extra=_photos(root))
    common = ["--cache.stored_size=48", f"--cache.resize_policy={policy}", f"--cache.draft={str(draft).lower()}"]
    pil = make_cfg(manifest, tmp_path / "pil", *common, "--cache.decoder=pil")
    dali = make_cfg(manifest, tmp_path / "dali", *common, "--cache.decoder=dali")
    for cfg in (pil, dali):
        build_cache(cfg, make_ctx(cfg), "train", progress=False)
    a, b = _records(pil), _records(dali)
    diff = np.abs(a - b).reshape(len(a), -1)
    suffix = "" if draft else "_no_draft"
    print(f"{policy} draft={draft}: mean {diff.mean(1).max():.3f}, >16 {(diff > 16).mean(1).max():.4f}, max {diff.max()}")
    assert diff.mean(1).max() <= TOLERANCE["mean_abs" + suffix]
    assert (diff > 16).mean(1).max() <= TOLERANCE["frac_over_16" + suffix]
    assert diff.max() > 0  # DALI did decode the JPEGs
    for i in (-1, -2):  # PNG with alpha and CMYK JPEG: Pillow's own pixels
        np.testing.assert_array_equal(a[i], b[i])
    meta = [json.loads(next((tmp_path / d).glob("train-*/metadata.json")).read_text()) for d in ("pil", "dali")]
    assert [m["decoder"] for m in meta] == ["pil", "dali-cpu"] and meta[0]["key"] == meta[1]["key"]


def test_dali_rejects_report_is_the_pil_paths(tmp_path):
    root = tmp_path / "data"
    write_dataset(root)
    manifest = write_dataset(root, extra=_bad_files(root))
    cfgs = [make_cfg(manifest, tmp_path / d, "--data.on_bad_image=skip", f"--cache.decoder={d}") for d in ("pil", "dali")]
    ctxs = [make_ctx(cfg) for cfg in cfgs]
    (root / "bad" / "missing.jpg").unlink()  # after the manifest was validated
    reports = []
    for cfg, ctx in zip(cfgs, ctxs):
        summary = build_cache(cfg, ctx, "train", progress=False)
        assert len(summary.rejected) == 5
        with open(summary.folder / "rejects.csv", newline="") as f:
            reports.append(list(csv.DictReader(f)))
    assert reports[0] == reports[1]


def test_dali_build_resumes_byte_identically_after_sigkill(dataset, tmp_path):
    tool = [sys.executable, str(REPO / "tools/build_cache.py"), "--no-progress", "--cache.decoder=dali", "--config"]
    partial, env = sigkill_mid_build(tool, dataset, tmp_path, seconds=60)
    assert json.loads((partial / "key.json").read_text())["decoder"] == "dali-cpu"
    a, b = resume_and_build_whole(tool, dataset, tmp_path, env)
    assert a.name == b.name and _tree_bytes(a) == _tree_bytes(b)


def test_partial_build_of_another_decoder_starts_afresh(dataset, tmp_path):
    """Chunks written by Pillow are not continued by DALI: the records would not be byte-identical."""
    from engine.data.cache import format as fmt
    from engine.data.cache.writer import _prepare_partial

    cfg = make_cfg(dataset, tmp_path / "cache")
    key = fmt.cache_key(cfg, make_ctx(cfg), "train")
    partial = tmp_path / "x.partial"
    assert _prepare_partial(partial, key, 24, 100, 4, "pil") == 4
    (partial / fmt.CHUNKS / "00000000.json").write_text("{}")
    assert _prepare_partial(partial, key, 24, 100, 8, "pil") == 4  # same decoder: continues, its chunk size
    assert _prepare_partial(partial, key, 24, 100, 8, "dali-cpu") == 8  # another: afresh
    assert not list((partial / fmt.CHUNKS).iterdir())


@pytest.mark.parametrize("cap,expected", [("cpu", {"decoder": "pil"}),
                                          ("7.5", {"decoder": "dali", "device": "mixed", "hw_decoder_load": 0.0}),
                                          ("9.0", {"decoder": "dali", "device": "mixed", "hw_decoder_load": 0.75})])
def test_auto_decoder_follows_the_card(monkeypatch, cap, expected):
    monkeypatch.setenv(hardware.FORCE_ENV, cap)
    info = hardware.device_info()
    assert hardware.choose_cache_decoder(info) == expected
    assert hardware.choose_cache_decoder(info, "pil") == {"decoder": "pil"}
    assert hardware.choose_cache_decoder(hardware.device_info(), "dali")["decoder"] == "dali"
    with pytest.raises(ValueError, match="cache.decoder"):
        hardware.choose_cache_decoder(info, "nvjpeg")


def test_dali_decoder_geometry_on_exif_and_pad(tmp_path):
    """Orientation 6 (displayed rotated 90 degrees) and the pad canvas, against Pillow's own decode."""
    from engine.data.cache.decode import decode_resized

    wide = Image.new("RGB", (120, 60), (255, 0, 0))
    wide.paste((0, 0, 255), (60, 0, 120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(tmp_path / "exif.jpg", quality=95, exif=exif)
    for policy in ("crop", "pad"):
        (got,) = DaliDecoder(32, policy)([str(tmp_path / "exif.jpg")])
        ref = decode_resized(str(tmp_path / "exif.jpg"), 32, policy, False)
        assert got.shape == ref.shape == (32, 32, 3)
        assert np.abs(got.astype(int) - ref.astype(int)).mean() <= TOLERANCE["mean_abs_no_draft"]
