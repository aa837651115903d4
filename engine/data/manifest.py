"""Manifests: CSV or JSON Lines, one row per sample, validated before any work starts."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine.data.config import DataConfig

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest problem; the message names the file and the rows."""


@dataclass
class Manifest:
    path: Path
    root: Path
    rows: list[dict]  # raw rows as read (row i is the i-th data row of the file)
    classes: list[str]  # class index -> name, stable: sorted (numerically for integer labels)
    labels: np.ndarray  # int64 [N] class index per row
    splits: np.ndarray  # str [N]
    version: str  # sha256 of the manifest file's bytes: the dataset version

    def __len__(self) -> int:
        return len(self.rows)

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def image_path(self, i: int, column: str) -> Path:
        return self.root / str(self.rows[i][column])

    def column(self, name: Optional[str], indices: np.ndarray) -> list[str]:
        if not name:
            return ["" for _ in indices]
        return ["" if self.rows[i].get(name) is None else str(self.rows[i][name]) for i in indices]


_EXTRA = "\0extra"  # where csv puts the fields of a row longer than the header


def _read_rows(path: Path, text: str) -> list[dict]:
    """Rows of the manifest ``text`` (read from ``path``), each tagged with its line number."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for lineno, line in enumerate(text.split("\n"), 1):  # "\n" only: JSON strings may hold other line breaks
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}: line {lineno} is not a JSON object")
            row["_line"] = lineno
            rows.append(row)
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",",
                                restkey=_EXTRA)
        rows, long, short = [], [], []
        for row in reader:
            row["_line"] = reader.line_num
            if _EXTRA in row:
                long.append(str(reader.line_num))
            elif any(v is None for v in row.values()):
                short.append(str(reader.line_num))
            rows.append(row)
        if long:
            raise ManifestError(f"{path}: {len(long)} rows have more fields than the header (an unquoted comma in a "
                                f"text?) (lines {_examples(long)})")
        if short:
            raise ManifestError(f"{path}: {len(short)} rows have fewer fields than the header (lines {_examples(short)})")
        return rows
    raise ManifestError(f"{path}: unsupported manifest type '{path.suffix}' (use .csv, .tsv or .jsonl)")


def _examples(items: list[str], k: int = 5) -> str:
    return "; ".join(items[:k]) + (f"; ... ({len(items) - k} more)" if len(items) > k else "")


def _label_text(v) -> str:
    """A label as text, surrounding whitespace dropped ("cat " is "cat"); JSON numbers 2 and 2.0 are both "2"."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _canonical_labels(raw: list[str]) -> list[str]:
    """Integer labels ("02", "2", "2.0") collapse to one class "2"; any non-integer label keeps them all textual."""
    try:
        return [str(int(v)) for v in raw]
    except ValueError:
        pass
    try:
        as_float = [float(v) for v in raw]
    except ValueError:
        return raw
    return [str(int(f)) for f in as_float] if all(f.is_integer() for f in as_float) else raw


def _label_classes(canonical: list[str]) -> list[str]:
    values = set(canonical)
    try:
        return [str(v) for v in sorted(int(v) for v in values)]
    except ValueError:
        return sorted(values)


def load_manifest(cfg: DataConfig, check_files: bool = True, required_splits: tuple[str, ...] = ("train", "val")) -> Manifest:
    """Read and validate ``cfg.manifest``; every problem names the file and the rows concerned."""
    if not cfg.manifest:
        raise ManifestError("data.manifest is not set")
    path = Path(cfg.manifest)
    if not path.is_file():
        raise ManifestError(f"data.manifest: {path} does not exist")
    root = Path(cfg.root) if cfg.root else path.parent
    if not root.is_dir():
        raise ManifestError(f"data.root: {root} is not a folder")
    raw = path.read_bytes()  # read once: the version hash is of exactly the bytes parsed below
    try:
        rows = _read_rows(path, raw.decode("utf-8-sig"))  # -sig: Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}); save the manifest as UTF-8") from None
    if not rows:
        raise ManifestError(f"{path}: no rows")

    needed = [cfg.image_column, cfg.label_column, cfg.split_column, *cfg.numeric_columns, *cfg.categorical_columns]
    if cfg.text_column:
        needed.append(cfg.text_column)
    for col in needed:
        missing = [r["_line"] for r in rows if col not in r]
        if missing:
            where = "the header" if path.suffix.lower() in (".csv", ".tsv") else f"lines {_examples([str(m) for m in missing])}"
            raise ManifestError(f"{path}: column '{col}' is missing from {where} (configured by data.*_column(s))")

    empty = [str(r["_line"]) for r in rows if r[cfg.label_column] is None or not _label_text(r[cfg.label_column])]
    if empty:
        raise ManifestError(f"{path}: {len(empty)} rows have an empty label '{cfg.label_column}' (lines {_examples(empty)})")
    bad_split = [f"line {r['_line']}: {r[cfg.split_column]!r}" for r in rows if r[cfg.split_column] not in SPLITS]
    if bad_split:
        raise ManifestError(f"{path}: {len(bad_split)} rows have an unknown split (expected one of {SPLITS}): {_examples(bad_split)}")
    splits = np.array([r[cfg.split_column] for r in rows])
    for split in required_splits:
        if not (splits == split).any():
            raise ManifestError(f"{path}: split '{split}' has no rows")

    root_real = os.path.realpath(root)
    escaping, missing_files = [], []
    for r in rows:
        rel = str(r[cfg.image_column] or "")
        full = os.path.realpath(os.path.join(root_real, rel))
        if not rel or os.path.isabs(rel) or os.path.commonpath([root_real, full]) != root_real:
            escaping.append(f"line {r['_line']}: {rel!r}")
        elif check_files and not os.path.isfile(full):
            missing_files.append(f"line {r['_line']}: {rel}")
    if escaping:
        raise ManifestError(f"{path}: {len(escaping)} image paths are empty, absolute or escape data.root={root}: {_examples(escaping)}")
    if missing_files:
        raise ManifestError(f"{path}: {len(missing_files)} image files do not exist under {root}: {_examples(missing_files)}")

    raw_labels = _canonical_labels([_label_text(r[cfg.label_column]) for r in rows])
    classes = _label_classes(raw_labels)
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[v] for v in raw_labels], dtype=np.int64)
    _warn_duplicate_images(path, rows, cfg.image_column, splits, raw_labels)
    return Manifest(path, root, rows, classes, labels, splits, hashlib.sha256(raw).hexdigest())


def _warn_duplicate_images(path: Path, rows: list[dict], column: str, splits: np.ndarray, labels: list[str]) -> None:
    """One photo in two splits leaks evaluation data into training; one photo under two labels is a labelling
    conflict. Both are legitimate sometimes (augmented copies, multi-label exports), so they are reported, not refused."""
    seen: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        seen.setdefault(os.path.normpath(str(r[column])), []).append(i)
    leaks, conflicts = [], []
    for image, idx in seen.items():
        if len(idx) < 2:
            continue
        lines = ", ".join(str(rows[i]["_line"]) for i in idx[:4])
        if len({splits[i] for i in idx}) > 1:
            leaks.append(f"{image} (lines {lines})")
        if len({labels[i] for i in idx}) > 1:
            conflicts.append(f"{image} (lines {lines})")
    if leaks:
        log.warning("%s: %d images appear in more than one split (evaluation leaks into training): %s",
                    path, len(leaks), _examples(leaks))
    if conflicts:
        log.warning("%s: %d images appear with different labels: %s", path, len(conflicts), _examples(conflicts))


def select_split(manifest: Manifest, split: str, max_samples: Optional[int], seed: int) -> np.ndarray:
    """Row indices of ``split``, optionally a seeded subset: identical on every run and every rank."""
    idx = manifest.split_indices(split)
    if max_samples is not None and max_samples < len(idx):
        rng = np.random.default_rng([seed, 0x5EED, SPLITS.index(split)])
        idx = np.sort(rng.choice(idx, size=max_samples, replace=False))
    return idx


def split_limit(cfg: DataConfig, split: str) -> Optional[int]:
    return {"train": cfg.max_train_samples, "val": cfg.max_val_samples, "test": cfg.max_test_samples}[split]
