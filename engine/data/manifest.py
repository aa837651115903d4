"""Manifests: CSV or JSON Lines, one row per sample, validated before any work starts."""
from __future__ import annotations

import csv
import dataclasses
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
from engine.errors import UserError

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


class ManifestError(UserError, ValueError):
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
    left_out: Optional[np.ndarray] = None  # bool [N]: rows in no split (other-pool rows sampled away); label -1
    # per split, with data.classes: {"unit", "kept": {class: n}, "other_before", "other_after", "total"} (see other_pool)
    class_pool_counts: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.rows)

    def split_indices(self, split: str) -> np.ndarray:
        member = self.splits == split
        return np.flatnonzero(member if self.left_out is None else member & ~self.left_out)

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


def load_manifest(cfg: DataConfig, check_files: bool = True, required_splits: tuple[str, ...] = ("train", "val"),
                  seed: int = 0) -> Manifest:
    """Read and validate ``cfg.manifest``; every problem names the file and the rows concerned.

    ``seed`` (the run seed) draws the other pool when ``data.other_ratio`` caps it (``other_pool``)."""
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
        if not (splits == split).any() and not (cfg.folds and split == "val"):  # with folds, val is a fold of train
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
    _warn_untrainable_rows(path, rows, splits, raw_labels, labels_bounded=cfg.classes is not None)
    if cfg.group_captions:
        _refuse_caption_conflicts(path, rows, cfg.image_column, splits, raw_labels)
    else:
        _warn_duplicate_images(path, rows, cfg.image_column, splits, raw_labels)
    version = hashlib.sha256(raw).hexdigest()
    if cfg.classes is not None:
        m = other_pool(Manifest(path, root, rows, [], np.zeros(0, np.int64), splits, version), cfg, raw_labels, seed)
    else:
        classes = _label_classes(raw_labels)
        lookup = {c: i for i, c in enumerate(classes)}
        m = Manifest(path, root, rows, classes, np.array([lookup[v] for v in raw_labels], dtype=np.int64), splits, version)
    return fold_splits(m, cfg, seed) if cfg.folds else m


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int64 [N] fold of each position: per label, a seeded shuffle dealt round-robin, continuing where the
    previous label stopped so that fold sizes differ by at most one."""
    if k < 2:
        raise ManifestError(f"--folds must be >= 2, got {k}")
    if len(labels) < k:
        raise ManifestError(f"the train split has {len(labels)} rows, fewer than {k} folds")
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng([seed, 0x00F])
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        folds[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return folds


def fold_splits(m: Manifest, cfg: DataConfig, seed: int) -> Manifest:
    """``m`` with data.folds applied: the train rows of fold data.fold become val, the other train rows stay
    train, the manifest's val rows are in no split; test is untouched. The same file and rows, so the caches of
    the unfolded recipe hold every fold's rows (engine/data/cache/selection.py)."""
    train = m.split_indices("train")
    folds = stratified_folds(m.labels[train], cfg.folds, seed)
    splits = m.splits.copy()
    splits[splits == "val"] = ""
    splits[train[folds == cfg.fold]] = "val"
    return dataclasses.replace(m, splits=splits)


def image_groups(rows: list[dict], column: str, indices: np.ndarray) -> list[list[int]]:
    """``indices`` grouped by image path (normalised: "a/./b.jpg" is "a/b.jpg"), each group in row order, the
    groups in the order of their first row."""
    groups: dict[str, list[int]] = {}
    for i in indices.tolist():
        groups.setdefault(os.path.normpath(str(rows[i][column])), []).append(i)
    return list(groups.values())


def _refuse_caption_conflicts(path: Path, rows: list[dict], column: str, splits: np.ndarray, labels: list[str]) -> None:
    """With data.group_captions the rows of one image are one sample: they must agree on its label and split."""
    bad = []
    for idx in image_groups(rows, column, np.arange(len(rows))):
        if len(idx) > 1 and (len({labels[i] for i in idx}) > 1 or len({splits[i] for i in idx}) > 1):
            what = ", ".join(f"line {rows[i]['_line']}: {labels[i]!r}/{splits[i]}" for i in idx[:6])
            bad.append(f"{rows[idx[0]][column]} ({what})")
    if bad:
        raise ManifestError(f"{path}: {len(bad)} images have caption rows with conflicting labels or splits "
                            f"(data.group_captions=true makes the rows of one image one sample; label/split per "
                            f"line): {_examples(bad)}")


def _resolve_classes(path: Path, cfg: DataConfig, present: set[str]) -> list[str]:
    """data.classes as the manifest spells them ("02" finds integer label "2"); an absent one is refused."""
    out, missing = [], []
    for c in cfg.classes:
        text = _label_text(c)
        if text not in present:
            text = _canonical_labels([text])[0]
        (out if text in present else missing).append(text if text in present else str(c))
    if missing:
        raise ManifestError(f"{path}: data.classes lists {missing}, which no row of column '{cfg.label_column}' "
                            f"has (labels present: {_examples(_label_classes(sorted(present)), 10)})")
    return out


def other_pool(m: Manifest, cfg: DataConfig, raw_labels: list[str], seed: int) -> Manifest:
    """Keep the labels of ``data.classes``; every other label becomes ``data.other_name``, capped per split.

    Counted in samples: images under data.group_captions (all caption rows of an image stay or go together),
    rows otherwise. Per split, with K kept samples and O other samples, ``other_ratio`` r keeps
    ``min(O, floor(r * K / (1 - r)))`` other samples, drawn without replacement (seeded by the run seed and the
    split): the largest count whose share of the split after sampling, other / (K + other), is at most r.
    r = null keeps all O. Classes: the kept ones in the usual order (numeric for integer labels), then
    ``other_name`` if any other sample is left. ``class_pool_counts[split]`` records what was kept.
    """
    kept_names = _resolve_classes(m.path, cfg, set(raw_labels))
    listed = set(kept_names)
    is_other = np.array([v not in listed for v in raw_labels], dtype=bool)
    left_out = np.zeros(len(m.rows), dtype=bool)
    counts = {}
    for split in SPLITS:
        idx = np.flatnonzero(m.splits == split)
        if not len(idx):
            continue
        units = image_groups(m.rows, cfg.image_column, idx) if cfg.group_captions else [[i] for i in idx.tolist()]
        other = [u for u in units if is_other[u[0]]]  # the rows of a unit share a label (refused otherwise)
        n_kept = len(units) - len(other)
        n_after = len(other)
        if cfg.other_ratio is not None:
            n_after = min(len(other), int(np.floor(cfg.other_ratio * n_kept / (1.0 - cfg.other_ratio) + 1e-9)))
        rng = np.random.default_rng([seed, 0x07E4, SPLITS.index(split)])
        chosen = set(rng.choice(len(other), size=n_after, replace=False).tolist()) if other else set()
        for j, u in enumerate(other):
            if j not in chosen:
                left_out[u] = True
        per_class = {c: 0 for c in _label_classes(kept_names)}
        for u in units:
            if not is_other[u[0]]:
                per_class[raw_labels[u[0]]] += 1
        counts[split] = {"unit": "image" if cfg.group_captions else "row", "kept": per_class,
                         "other_before": len(other), "other_after": n_after, "total": n_kept + n_after}
    classes = _label_classes(kept_names) + ([cfg.other_name] if (is_other & ~left_out).any() else [])
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([-1 if out else lookup[cfg.other_name if o else v]
                       for v, o, out in zip(raw_labels, is_other, left_out)], dtype=np.int64)
    return Manifest(m.path, m.root, m.rows, classes, labels, m.splits, m.version, left_out, counts)


def _warn_untrainable_rows(path: Path, rows: list[dict], splits: np.ndarray, labels: list[str], labels_bounded: bool) -> None:
    """A label seen only in val/test can never be predicted (its score is pure loss); an exact copy of a row within
    a split counts that sample twice (a concatenated export). Reported, not refused: the user decides."""
    in_train = {lab for lab, s in zip(labels, splits) if s == "train"}
    unseen: dict[str, list[str]] = {}
    copies: dict[tuple, list[str]] = {}
    for r, lab, split in zip(rows, labels, splits):
        if split != "train" and lab not in in_train:
            unseen.setdefault(lab, []).append(str(r["_line"]))
        copies.setdefault((split, *sorted((k, str(v)) for k, v in r.items() if k != "_line")), []).append(str(r["_line"]))
    if unseen and not labels_bounded:
        log.warning("%s: %d labels appear only in val/test, never in train (the model cannot learn them): %s", path,
                    len(unseen), _examples([f"{lab!r} (lines {_examples(lines, 3)})" for lab, lines in unseen.items()]))
    dups = [f"{key[0]} lines {', '.join(lines[:4])}" for key, lines in copies.items() if len(lines) > 1]
    if dups:
        log.warning("%s: %d rows are exact copies of another row of their split (counted twice): %s", path, len(dups),
                    _examples(dups))


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


def select_samples(manifest: Manifest, cfg: DataConfig, split: str, seed: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The samples of ``split``: (rows int64 [N], caption_rows int64 [N, K] or None).

    Without data.group_captions a sample is a row (``select_split``). With it, a sample is an image: ``rows`` is
    the first row of each image (images in the order of their first row), ``caption_rows[p]`` its rows in order,
    padded with -1 to K = the split's most captions per image; ``max_*_samples`` count images.
    """
    limit = split_limit(cfg, split)
    if not cfg.group_captions:
        return select_split(manifest, split, limit, seed).astype(np.int64), None
    groups = image_groups(manifest.rows, cfg.image_column, manifest.split_indices(split))
    if limit is not None and limit < len(groups):
        rng = np.random.default_rng([seed, 0x5EED, SPLITS.index(split)])
        groups = [groups[i] for i in np.sort(rng.choice(len(groups), size=limit, replace=False))]
    caption_rows = np.full((len(groups), max((len(g) for g in groups), default=1)), -1, dtype=np.int64)
    for p, g in enumerate(groups):
        caption_rows[p, : len(g)] = g
    return caption_rows[:, 0].copy(), caption_rows
