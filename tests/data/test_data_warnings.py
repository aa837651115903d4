"""Data that loads but deserves a warning: labels never seen in training, duplicated rows, tiny images."""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from engine.data.cache.decode import decode_resized
from engine.data.manifest import load_manifest
from tests.data.test_manifest import _cfg, _rows, _write


def test_a_label_only_in_val_is_reported(tmp_path, caplog):
    rows = _rows()
    rows[5][2] = "zebra"  # a val row with a label no train row has
    with caplog.at_level(logging.WARNING):
        load_manifest(_cfg(_write(tmp_path, rows)))
    assert "1 labels appear only in val/test" in caplog.text and "'zebra' (lines 7)" in caplog.text


def test_exact_duplicate_rows_within_a_split_are_reported(tmp_path, caplog):
    rows = _rows()
    rows.append(list(rows[1]))  # the same train row twice (a concatenated export)
    with caplog.at_level(logging.WARNING):
        load_manifest(_cfg(_write(tmp_path, rows)))
    assert "1 rows are exact copies of another row of their split" in caplog.text and "train lines 3, 8" in caplog.text


def test_clean_manifest_warns_about_nothing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        load_manifest(_cfg(_write(tmp_path, _rows())))
    assert "only in val/test" not in caplog.text and "exact copies" not in caplog.text


def test_a_tiny_image_blown_up_is_reported(tmp_path, caplog):
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    with caplog.at_level(logging.WARNING):
        assert decode_resized(str(tmp_path / "photo.png"), 64).shape == (64, 64, 3)
        assert "upscaled" not in caplog.text
        assert decode_resized(str(tmp_path / "dot.png"), 64).shape == (64, 64, 3)
    assert "dot.png: 1x1 pixels, upscaled 64x to 64x64" in caplog.text


def test_pil_backend_skips_or_names_an_undecodable_image(tmp_path):
    import pytest

    from engine.data.dali.bad_images import BadImageError
    from engine.data.loaders import create_loader
    from tests.data.conftest import make_cfg, make_ctx, write_dataset

    manifest = write_dataset(tmp_path / "data")
    (tmp_path / "data" / "img" / "0002.jpg").write_bytes(b"")  # a zero-byte photo (an interrupted copy)
    skip = make_cfg(manifest, tmp_path / "cache", "--loader.backend=pil", "--data.on_bad_image=skip", "--loader.num_workers=0")
    ctx = make_ctx(skip)
    loader = create_loader(skip, ctx, "train", True)
    rows = {int(r) for batch in loader for r in batch.index}
    assert len(loader.served_positions()) == len(ctx.split("train")) - 1 and int(ctx.split("train").rows[2]) not in rows
    for workers in (0, 2):
        strict = make_cfg(manifest, tmp_path / "cache", "--loader.backend=pil", f"--loader.num_workers={workers}")
        with pytest.raises(BadImageError) as e:
            list(create_loader(strict, make_ctx(strict), "train", True))
        assert "0002.jpg (manifest row 2, train split) does not decode" in str(e.value) and "Traceback" not in str(e.value)
