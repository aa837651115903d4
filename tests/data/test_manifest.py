"""Manifest validation: every problem names the file and the rows; seeded subsets are stable."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from engine.data.config import DataConfig
from engine.data.manifest import ManifestError, load_manifest, select_split

HEADER = ["image", "text", "label", "split"]


def _write(root: Path, rows: list[list[str]], header=HEADER) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for r in rows:
        if r and r[0] and not r[0].startswith(("..", "/")) and r[0] != "img/missing.jpg":
            (root / r[0]).write_bytes(b"x")
    path = root / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(n_train=4, n_val=2, label=lambda i: "ab"[i % 2]):
    return [[f"img/{i}.jpg", f"t{i}", label(i), "train" if i < n_train else "val"] for i in range(n_train + n_val)]


def _cfg(path, **kw) -> DataConfig:
    return DataConfig(manifest=str(path), **kw)


def test_missing_column_is_named(tmp_path):
    path = _write(tmp_path, [r[:3] for r in _rows()], header=HEADER[:3])
    with pytest.raises(ManifestError, match="column 'split' is missing from the header"):
        load_manifest(_cfg(path))


def test_nonexistent_images_are_counted_with_examples(tmp_path):
    rows = _rows()
    rows[1][0] = rows[3][0] = "img/missing.jpg"
    with pytest.raises(ManifestError, match=r"2 image files do not exist.*line 3: img/missing.jpg; line 5: img/missing.jpg"):
        load_manifest(_cfg(_write(tmp_path, rows)))


def test_path_escaping_root_is_rejected(tmp_path):
    rows = _rows()
    rows[0][0] = "../outside.jpg"
    with pytest.raises(ManifestError, match=r"1 image paths are empty, absolute or escape.*'../outside.jpg'"):
        load_manifest(_cfg(_write(tmp_path / "data", rows)))


def test_empty_label(tmp_path):
    rows = _rows()
    rows[2][2] = ""
    with pytest.raises(ManifestError, match=r"1 rows have an empty label 'label' \(lines 4\)"):
        load_manifest(_cfg(_write(tmp_path, rows)))


def test_unknown_split(tmp_path):
    rows = _rows()
    rows[1][3] = "training"
    with pytest.raises(ManifestError, match=r"unknown split.*line 3: 'training'"):
        load_manifest(_cfg(_write(tmp_path, rows)))


def test_split_with_no_rows(tmp_path):
    with pytest.raises(ManifestError, match="split 'val' has no rows"):
        load_manifest(_cfg(_write(tmp_path, _rows(n_val=0))))


def test_integer_labels_map_in_numeric_order(tmp_path):
    labels = ["10", "2", "-1", "2", "10", "2"]
    m = load_manifest(_cfg(_write(tmp_path, _rows(label=lambda i: labels[i]))))
    assert m.classes == ["-1", "2", "10"]
    assert m.labels.tolist() == [2, 1, 0, 1, 2, 1]


def test_seeded_subsets_are_deterministic(tmp_path):
    m = load_manifest(_cfg(_write(tmp_path, _rows(n_train=40))))
    a, b = select_split(m, "train", 10, seed=0), select_split(m, "train", 10, seed=0)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10
    assert not np.array_equal(a, select_split(m, "train", 10, seed=1))
    assert len(select_split(m, "train", None, seed=0)) == 40


def test_integer_label_spellings_are_one_class(tmp_path):
    labels = ["02", "2", "1", "01", "2", "1"]
    m = load_manifest(_cfg(_write(tmp_path, _rows(label=lambda i: labels[i]))))
    assert m.classes == ["1", "2"] and m.labels.tolist() == [1, 1, 0, 0, 1, 0]


def test_mixed_labels_stay_textual(tmp_path):
    labels = ["01", "a", "1", "a", "b", "01"]
    m = load_manifest(_cfg(_write(tmp_path, _rows(label=lambda i: labels[i]))))
    assert m.classes == ["01", "1", "a", "b"] and m.labels.tolist() == [0, 2, 1, 2, 3, 0]


def test_version_is_the_sha256_of_the_manifest_bytes_and_non_utf8_is_named(tmp_path):
    import hashlib

    manifest = _write(tmp_path, _rows())
    m = load_manifest(_cfg(manifest, text_column=None))
    assert m.version == hashlib.sha256(manifest.read_bytes()).hexdigest()
    manifest.write_bytes(manifest.read_bytes() + "img/0.jpg,caf\xe9,a,train\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=rf"{manifest}: not UTF-8"):
        load_manifest(_cfg(manifest, text_column=None))


def test_rows_with_more_or_fewer_fields_than_the_header_are_named(tmp_path):
    rows = _rows()
    path = _write(tmp_path, rows)
    path.write_text(path.read_text() + "img/0.jpg,a black cat, sitting,a,train\n")  # unquoted comma in the text
    with pytest.raises(ManifestError, match=r"1 rows have more fields than the header .*lines 8"):
        load_manifest(_cfg(path))
    path = _write(tmp_path, rows)
    path.write_text(path.read_text() + "img/0.jpg,a\n")
    with pytest.raises(ManifestError, match=r"1 rows have fewer fields than the header \(lines 8\)"):
        load_manifest(_cfg(path))


def test_excel_bom_and_label_spellings(tmp_path):
    labels = ["cat ", "dog", "cat", " dog", "cat", "dog"]
    path = _write(tmp_path, _rows(label=lambda i: labels[i]))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's "CSV UTF-8"
    m = load_manifest(_cfg(path))
    assert m.classes == ["cat", "dog"] and m.labels.tolist() == [0, 1, 0, 1, 0, 1]
    blank = _write(tmp_path, _rows(label=lambda i: "  " if i == 2 else "a"))
    with pytest.raises(ManifestError, match="1 rows have an empty label"):
        load_manifest(_cfg(blank))


def test_jsonl_number_labels(tmp_path):
    import json

    (tmp_path / "img").mkdir()
    lines = []
    for i, label in enumerate([2.0, 10, 1.0, 2, 10.0, 1]):
        (tmp_path / f"img/{i}.jpg").write_bytes(b"x")
        lines.append(json.dumps({"image": f"img/{i}.jpg", "text": "t", "label": label, "split": "train" if i < 4 else "val"}))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines))
    m = load_manifest(_cfg(path))
    assert m.classes == ["1", "2", "10"] and m.labels.tolist() == [1, 2, 0, 1, 2, 0]


def test_one_image_in_two_splits_or_under_two_labels_is_reported(tmp_path, caplog):
    rows = _rows()
    rows[5][0] = rows[0][0]  # a val row reuses a train image, under another label
    with caplog.at_level("WARNING"):
        load_manifest(_cfg(_write(tmp_path, rows)))
    assert "1 images appear in more than one split" in caplog.text and "img/0.jpg (lines 2, 7)" in caplog.text
    assert "1 images appear with different labels" in caplog.text


# --- data.classes: the bounded "other" pool ------------------------------------------------------------------


def _pool_rows(n_train=100, n_val=40):
    """Labels a (40%), b (20%), then c..h (40% together) in both splits."""
    names = "aaaabbcdefgh"
    return [[f"img/{i}.jpg", f"t{i}", names[i % 12], "train" if i < n_train else "val"] for i in range(n_train + n_val)]


def test_other_pool_keeps_the_listed_classes_and_caps_the_rest(tmp_path):
    path = _write(tmp_path, _pool_rows())
    m = load_manifest(_cfg(path, classes=["b", "a"], other_ratio=0.05), seed=0)
    assert m.classes == ["a", "b", "other"]
    train = m.class_pool_counts["train"]
    kept = train["kept"]["a"] + train["kept"]["b"]
    assert train["unit"] == "row" and train["other_before"] == sum(1 for r in _pool_rows() if r[3] == "train" and r[2] not in "ab")
    assert train["other_after"] == int(np.floor(0.05 * kept / 0.95)) and train["total"] == kept + train["other_after"]
    assert train["other_after"] / train["total"] <= 0.05 < (train["other_after"] + 1) / (train["total"] + 1)
    for split in ("train", "val"):  # what the splits hold is what the counts say
        idx = m.split_indices(split)
        c = m.class_pool_counts[split]
        assert len(idx) == c["total"] and (m.labels[idx] == 2).sum() == c["other_after"]
        assert {m.rows[i]["label"] for i in idx if m.labels[i] == 2} <= set("cdefgh")
    assert (m.labels[m.left_out] == -1).all() and m.left_out.sum() == sum(
        c["other_before"] - c["other_after"] for c in m.class_pool_counts.values())
    again = load_manifest(_cfg(path, classes=["b", "a"], other_ratio=0.05), seed=0)
    np.testing.assert_array_equal(again.left_out, m.left_out)  # seeded
    assert not np.array_equal(load_manifest(_cfg(path, classes=["b", "a"], other_ratio=0.05), seed=1).left_out, m.left_out)


def test_other_pool_without_a_ratio_keeps_every_row(tmp_path):
    path = _write(tmp_path, _pool_rows())
    m = load_manifest(_cfg(path, classes=["a"], other_name="rest"))
    assert m.classes == ["a", "rest"] and m.left_out is not None and not m.left_out.any()
    assert m.class_pool_counts["val"]["other_before"] == m.class_pool_counts["val"]["other_after"]
    assert len(m.split_indices("train")) == 100
    none_left = load_manifest(_cfg(path, classes=["a"], other_ratio=0.0))
    assert none_left.classes == ["a"] and set(none_left.labels[none_left.split_indices("train")]) == {0}


def test_a_listed_class_that_never_occurs_is_refused(tmp_path):
    path = _write(tmp_path, _pool_rows())
    with pytest.raises(ManifestError, match=r"m\.csv: data\.classes lists \['zebra'\], which no row of column 'label' has"):
        load_manifest(_cfg(path, classes=["a", "zebra"]))
    with pytest.raises(ValueError, match="data.other_ratio needs data.classes"):
        _cfg(path, other_ratio=0.1)
    with pytest.raises(ValueError, match="other_name='a' must be non-empty and not one of data.classes"):
        _cfg(path, classes=["a"], other_name="a")


def test_other_pool_counts_images_with_grouped_captions(tmp_path):
    rows = []
    for i in range(60):  # 3 caption rows per image
        rows += [[f"img/{i}.jpg", f"t{i}-{k}", "aaab cdef"[i % 9], "train" if i < 45 else "val"] for k in range(3)]
    rows = [r for r in rows if r[2] != " "]
    path = _write(tmp_path, rows)
    m = load_manifest(_cfg(path, classes=["a"], other_ratio=0.2, group_captions=True))
    c = m.class_pool_counts["train"]
    assert c["unit"] == "image" and c["other_after"] == int(np.floor(0.2 * c["kept"]["a"] / 0.8))
    images = {}
    for i in m.split_indices("train"):
        images.setdefault(m.rows[i]["image"], []).append(i)
    assert all(len(v) == 3 for v in images.values())  # an image's captions stay or go together
    assert len(images) == c["total"]
