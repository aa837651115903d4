"""Out-of-fold predictions: K models, each trained without one fold of the train split and scoring it.

The train rows are split into K stratified folds (seeded: every label's rows are shuffled with the run seed
and dealt round-robin, so fold sizes and class mixes differ by at most one). Fold k is a normal run on a
copy of the manifest under OUT/folds/fold<k>/ whose split column says ``val`` for the rows of fold k and
``train`` for the other train rows; the original val rows are left out (they are not train rows) and test
rows stay ``test``. Image paths stay valid through ``data.root`` (the original manifest's folder unless set).
Each fold's tabular statistics and categorical vocabularies are fitted on its own training rows, so nothing
of a held-out row reaches its model, and its best checkpoint scores its held-out rows.

Caches: a fold's manifest is its own file, so its cache key differs; pixels are reused by pixel key, which
covers a split's image paths, so a fold's train and val caches decode their photos afresh (each train photo
K times in all). ``loader.backend: pil`` skips caches altogether.

Selection caveat: ``best`` is chosen on the held-out fold (it is the fold's val split), which makes the OOF
metrics slightly optimistic; ``eval.metric`` on a fixed epoch count (``train.early_stopping_patience: 0``,
compare ``last``) avoids it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from engine.errors import UserError


class OofError(UserError, ValueError):
    """A train split that cannot be folded as asked (too few rows of a class, a grouped-caption manifest)."""


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int64 [N] fold of each position: per label, a seeded shuffle dealt round-robin, continuing where the
    previous label stopped so that fold sizes differ by at most one."""
    if k < 2:
        raise OofError(f"--folds must be >= 2, got {k}")
    if len(labels) < k:
        raise OofError(f"the train split has {len(labels)} rows, fewer than --folds {k}")
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng([seed, 0x00F])
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        folds[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return folds


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(columns, rows as read) of a CSV or JSON Lines manifest, values untouched."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return list(dict.fromkeys(k for r in rows for k in r)), rows
    reader = csv.DictReader(text.splitlines(keepends=True))
    return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def fold_manifests(cfg, out: Path, k: int) -> tuple[list[Path], list[np.ndarray], np.ndarray, np.ndarray]:
    """Write OUT/folds/fold<i>/manifest.<ext> for every fold. Returns (their paths; per fold, the original
    manifest index of each of its rows; the train rows' original indices [N]; their folds [N]). A fold
    manifest keeps the original row order: the train rows (split rewritten) and the test rows."""
    from engine.data.manifest import load_manifest

    if cfg.data.group_captions:
        raise OofError("data.group_captions: out-of-fold predictions are per row; fold a grouped manifest by image first")
    manifest = load_manifest(cfg.data, check_files=False, required_splits=("train",), seed=cfg.run.seed)
    train = manifest.split_indices("train").astype(np.int64)
    folds = stratified_folds(manifest.labels[train], k, cfg.run.seed)
    fold_of = dict(zip(train.tolist(), folds.tolist()))
    columns, rows = read_rows(Path(cfg.data.manifest))
    if len(rows) != len(manifest.rows):
        raise OofError(f"{cfg.data.manifest}: read {len(rows)} rows here but the engine reads {len(manifest.rows)}")
    split_col, suffix = cfg.data.split_column, Path(cfg.data.manifest).suffix or ".csv"
    paths, kept_rows = [], []
    for f in range(k):
        kept = [i for i, r in enumerate(rows) if i in fold_of or r[split_col] == "test"]
        fold_rows = [{**rows[i], split_col: ("val" if fold_of[i] == f else "train")} if i in fold_of else rows[i] for i in kept]
        path = out / "folds" / f"fold{f}" / f"manifest{suffix}"
        write_rows(path, columns, fold_rows)
        paths.append(path)
        kept_rows.append(np.asarray(kept, dtype=np.int64))
    return paths, kept_rows, train, folds


def write_oof(out: Path, classes: list[str], rows: np.ndarray, labels: np.ndarray, folds: np.ndarray,
              probs: np.ndarray) -> Path:
    """OUT/oof.csv: row (original manifest index), label, fold, prob_<class> for every class; and oof.npz."""
    order = np.argsort(rows, kind="stable")
    path = out / "oof.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label", "fold", *(f"prob_{c}" for c in classes)])
        for i in order:
            w.writerow([int(rows[i]), classes[labels[i]], int(folds[i]), *(f"{p:.6f}" for p in probs[i])])
    np.savez(out / "oof.npz", rows=rows[order], labels=labels[order], folds=folds[order], probs=probs[order],
             classes=np.asarray(classes, dtype=str))
    return path
