"""Out-of-fold predictions: K models, each trained without one fold of the train split and scoring it.

The train rows are split into K stratified folds (seeded: every label's rows are shuffled with the run seed
and dealt round-robin, so fold sizes and class mixes differ by at most one). Fold k is a normal run of the
recipe with ``data.folds=K data.fold=k`` (engine/data/manifest.py: ``fold_splits``): the same manifest, whose
train rows of fold k are its val split and whose other train rows are its train split; the manifest's val rows
are left out (they are not train rows) and test rows stay ``test``. Each fold's tabular statistics and
categorical vocabularies are fitted on its own training rows, so nothing of a held-out row reaches its model,
and its best checkpoint scores its held-out rows.

Caches: every fold selects rows of the unfolded recipe's train and test caches, so the folds are served from
those (engine/data/cache/selection.py): the sweep builds them once and no fold decodes a photo.
``loader.backend: pil`` skips caches altogether.

Selection caveat: ``best`` is chosen on the held-out fold (it is the fold's val split), which makes the OOF
metrics slightly optimistic; ``eval.metric`` on a fixed epoch count (``train.early_stopping_patience: 0``,
compare ``last``) avoids it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from engine.data.manifest import stratified_folds  # the folds data.folds deals
from engine.errors import UserError


class OofError(UserError, ValueError):
    """A train split that cannot be folded as asked (too few rows of a class, a grouped-caption manifest)."""


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(columns, rows as read) of a CSV or JSON Lines manifest, values untouched."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return list(dict.fromkeys(k for r in rows for k in r)), rows
    reader = csv.DictReader(text.splitlines(keepends=True))
    return list(reader.fieldnames or []), list(reader)


def fold_assignment(cfg, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the train rows' manifest indices [N], their folds [N]) as ``data.folds=k`` deals them; written to
    OUT/folds.csv by tools/oof.py."""
    from engine.data.manifest import load_manifest

    if cfg.data.group_captions:
        raise OofError("data.group_captions: out-of-fold predictions are per row; fold a grouped manifest by image first")
    manifest = load_manifest(cfg.data, check_files=False, required_splits=("train",), seed=cfg.run.seed)
    train = manifest.split_indices("train").astype(np.int64)
    return train, stratified_folds(manifest.labels[train], k, cfg.run.seed)


def write_folds(out: Path, train: np.ndarray, folds: np.ndarray) -> Path:
    """OUT/folds.csv: row (manifest index), fold -- the rows each fold holds out."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "folds.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "fold"])
        w.writerows(zip(train.tolist(), folds.tolist()))
    return path


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
