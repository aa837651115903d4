"""Modality reliance: one run evaluated with all modalities present, then with each masked in turn.

Masking is the model's evaluation-time ``model.mask_modalities`` (the branch's features are multiplied by 0,
engine/models/fusion.py), so the masked evaluations are the same checkpoint on the same samples; the drop
(all present minus masked) says how much each modality's features carry. A model that never saw a masked
modality in training (``model.modality_dropout`` = 0) can also lose more than the modality's information:
the fused features move off what the head was trained on. docs/workflows.md shows a table.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from engine.errors import ConfigError

METRICS = ("top1", "auc_macro", "f1_macro", "loss")  # drop = all-present minus masked (for loss: masked minus all)


def eval_stem(split: str, checkpoint: str, masked: list[str] | tuple[str, ...] = ()) -> str:
    """The file stem of an evaluation under RUN_DIR/eval/: masked evaluations get their own files, so a
    ``--model.mask_modalities=[text]`` evaluation no longer overwrites the unmasked one."""
    return f"{split}_{checkpoint}" + (f"_masked-{'-'.join(sorted(masked))}" if masked else "")


def active_modalities(cfg) -> list[str]:
    """The branches a run's model has, in the model's order (engine/models/fusion.py builds the same ones).

    A dual encoder (``model.task=retrieval``) is refused: its score is the similarity of an image embedding and a
    text embedding, so masking either tower leaves nothing to compare: every pair scores the same, and recall then
    measures how ties are broken, for any model. The table would say "relies fully on both" whatever was learnt.
    """
    if cfg.model.task == "retrieval":
        raise ConfigError(
            "model.task=retrieval: modality reliance masks one branch of a fusion classifier and measures what is "
            "lost; a dual encoder scores image-text pairs by the similarity of its two towers' embeddings, so "
            "masking either tower gives every pair the same score: recall would measure how ties are broken, not the "
            "model. "
            "To see what each tower carries for a label, train a fusion classifier on them (model.task=classify, "
            "e.g. configs/medsiglip_classifier.yaml) and run tools/reliance.py on that run")
    out = []
    if cfg.model.backbone:
        out.append("image")
    if cfg.model.text_encoder and cfg.data.text_column:
        out.append("text")
    if cfg.model.use_tabular and (cfg.data.numeric_columns or cfg.data.categorical_columns):
        out.append("tabular")
    return out


def reliance_rows(results: dict[str, dict], split: str) -> list[dict]:
    """One row per evaluation ('none' first = all present): each metric and its drop against 'none'."""
    base = results["none"]
    rows = []
    for masked, metrics in results.items():
        row = {"masked": masked}
        for m in METRICS:
            value, ref = metrics.get(f"{split}_{m}", math.nan), base.get(f"{split}_{m}", math.nan)
            row[m] = value
            row[f"drop_{m}"] = (value - ref) if m == "loss" else (ref - value)
        rows.append(row)
    return rows


def write_reliance(out: Path, stem: str, rows: list[dict], meta: dict) -> list[Path]:
    """<stem>.csv, .md and .json (the rows plus ``meta``: run, split, checkpoint, samples)."""
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    (out / f"{stem}.md").write_text(markdown(rows))
    return [out / f"{stem}.{ext}" for ext in ("csv", "md", "json")]


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = [f"| {' | '.join(cols)} |", f"|{' --- |' * len(cols)}"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) if c == "masked" else f"{r[c]:+.4f}" if c.startswith("drop_")
                                       else f"{r[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"
