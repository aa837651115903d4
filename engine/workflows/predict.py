"""Predictions for new raw samples (images + texts + tabular fields), with no cache and no labels.

Preprocessing is the evaluation path of the PIL backend (engine/data/pil_loader.py: ``decode_rgb`` then
``pil_transforms(train=False)``: resize, centre crop, normalise), the text is tokenized with the run's
tokenizer and length, and tabular fields are encoded with the statistics and vocabularies fitted on the run's
own train split (rebuilt from its manifest, as at training). So a new sample is seen exactly as a test sample
of ``loader.backend: pil`` would be.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from engine.data.manifest import ManifestError


def read_new_samples(cfg, manifest: Path, root: Optional[Path], text: bool) -> tuple[list[dict], list[str]]:
    """(rows, absolute image paths) of a new manifest; a missing column or image is refused naming it."""
    from engine.workflows.oof import read_rows

    if not manifest.is_file():
        raise ManifestError(f"--manifest {manifest} does not exist")
    columns, rows = read_rows(manifest)
    needed = [cfg.data.image_column, *([cfg.data.text_column] if text else []), *cfg.data.numeric_columns,
              *cfg.data.categorical_columns]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ManifestError(f"{manifest}: columns {missing} are missing (the run was trained with them)")
    base = Path(root) if root else manifest.parent
    paths = [str(base / str(r[cfg.data.image_column])) for r in rows]
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise ManifestError(f"{manifest}: {len(absent)} images do not exist under {base} (e.g. {absent[:3]}); "
                            "image paths are relative to --root (default: the manifest's folder)")
    return rows, paths


def input_batches(cfg, ctx, rows: list[dict], paths: list[str], batch_size: int) -> Iterator[dict]:
    """Model inputs (fp32, CPU) for consecutive slices of the new samples."""
    from engine.data.pil_loader import decode_rgb, pil_transforms
    from engine.models.text import tokenize

    transform = pil_transforms(cfg.augment, cfg.data.image_size, train=False)
    for s in range(0, len(rows), batch_size):
        part, files = rows[s : s + batch_size], paths[s : s + batch_size]
        images = torch.stack([transform(decode_rgb(p)) for p in files])
        if ctx.tokenizer is not None:
            ids, mask = tokenize(ctx.tokenizer, [str(r[cfg.data.text_column] or "") for r in part], ctx.text_max_length)
        else:
            ids = mask = torch.zeros((len(part), 0), dtype=torch.long)
        numeric, categorical = ctx.tabular.encode(part)
        yield dict(images=images, input_ids=ids, attention_mask=mask, numeric=torch.from_numpy(numeric),
                   categorical=torch.from_numpy(categorical))


def write_predictions(path: Path, rows: list[dict], image_column: str, classes: list[str], probs: np.ndarray,
                      row_ids: Optional[list[int]] = None, labels: Optional[np.ndarray] = None) -> None:
    """row, id (when the manifest has an ``id`` column), image, label (when known), pred, prob, then prob_<class>
    for every class. ``row_ids``: manifest rows (default 0..N-1); ``labels``: class indices of an evaluated split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    has_id = bool(rows) and "id" in rows[0]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", *(["id"] if has_id else []), "image", *(["label"] if labels is not None else []), "pred",
                    "prob", *(f"prob_{c}" for c in classes)])
        for i, (r, p) in enumerate(zip(rows, probs)):
            j = int(np.argmax(p))
            w.writerow([row_ids[i] if row_ids is not None else i, *([r["id"]] if has_id else []), r[image_column],
                        *([classes[labels[i]]] if labels is not None else []), classes[j], f"{p[j]:.6f}",
                        *(f"{v:.6f}" for v in p)])
