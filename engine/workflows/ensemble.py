"""Ensembles: several runs' class probabilities on one split, averaged, scored like a single run.

Each member's probabilities are its evaluation's ``<split>_<checkpoint>_probs.npz`` (tools/evaluate.py writes
it); a missing or stale one (older than the checkpoint) is evaluated first. Members must have the same classes
in the same order (provenance.classes of their config.yaml) and score the same samples; otherwise the ensemble
is refused naming the runs.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from engine.errors import UserError


class EnsembleError(UserError, ValueError):
    """Runs that cannot be averaged (other classes, other samples, a missing run)."""


@dataclass
class Predictions:
    """One evaluation's gathered output: manifest rows, labels and every class's probability."""

    rows: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]
    probs: np.ndarray  # float32 [N, C]
    classes: list[str]

    @classmethod
    def load(cls, path: Path) -> "Predictions":
        z = np.load(path)
        order = np.argsort(z["rows"], kind="stable")  # row order: members line up sample by sample
        return cls(z["rows"][order], z["labels"][order], z["probs"][order], [str(c) for c in z["classes"]])


def run_classes(run: Path) -> list[str]:
    """The classes a run trained on, in its output order (recorded in config.yaml's provenance)."""
    p = Path(run) / "config.yaml"
    if not p.is_file():
        raise EnsembleError(f"--runs {run}: no config.yaml there; is it a run folder?")
    return list((yaml.safe_load(p.read_text()).get("provenance") or {}).get("classes") or [])


def check_same_classes(runs: list[Path]) -> list[str]:
    """The members' common classes; refused naming the first run whose classes differ from the first's."""
    first = run_classes(runs[0])
    for run in runs[1:]:
        other = run_classes(run)
        if other != first:
            extra, missing = sorted(set(other) - set(first)), sorted(set(first) - set(other))
            how = f"classes only in {run}: {extra}; only in {runs[0]}: {missing}" if extra or missing else "another order"
            raise EnsembleError(f"runs {runs[0]} and {run} do not have the same classes ({how}); an ensemble averages "
                                "class probabilities position by position, so every member must share them")
    return first


def probs_file(run: Path, split: str, checkpoint: str) -> Path:
    return Path(run) / "eval" / f"{split}_{checkpoint}_probs.npz"


def is_fresh(run: Path, split: str, checkpoint: str) -> bool:
    """An evaluation file written after the checkpoint it scored (a resumed run's newer 'best' makes it stale)."""
    f, ckpt = probs_file(run, split, checkpoint), Path(run) / "checkpoints" / checkpoint / "train_state.json"
    return f.is_file() and (not ckpt.is_file() or f.stat().st_mtime >= ckpt.stat().st_mtime)


def average(members: dict[str, Predictions]) -> Predictions:
    """Mean probabilities; refused naming the run whose samples differ from the first's."""
    names = list(members)
    first = members[names[0]]
    for name in names[1:]:
        m = members[name]
        if not np.array_equal(m.rows, first.rows) or not np.array_equal(m.labels, first.labels):
            raise EnsembleError(f"{name} scored other samples than {names[0]} ({len(m.rows)} vs {len(first.rows)} rows): "
                                "evaluate them on the same split and subset (data.max_*_samples)")
    probs = np.mean([members[n].probs for n in names], axis=0).astype(np.float32)
    return Predictions(first.rows, first.labels, probs, first.classes)


def write_ensemble(out: Path, split: str, table: list[dict], ensemble: Predictions, metrics: dict) -> list[Path]:
    """ensemble_<split>.{csv,md} (each member's and the ensemble's metrics), _metrics.json, _probs.npz."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ensemble_{split}"
    cols = list(table[0])
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(table)
    lines = [f"| {' | '.join(cols)} |", f"|{' --- |' * len(cols)}"]
    lines += ["| " + " | ".join(str(r[c]) if isinstance(r[c], str) else f"{r[c]:.4f}" for c in cols) + " |" for r in table]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}_metrics.json").write_text(json.dumps(metrics, indent=2))
    np.savez(out / f"{stem}_probs.npz", rows=ensemble.rows, labels=ensemble.labels, probs=ensemble.probs,
             classes=np.asarray(ensemble.classes, dtype=str))
    return [out / f"{stem}.{e}" for e in ("csv", "md")] + [out / f"{stem}_metrics.json", out / f"{stem}_probs.npz"]


def table_row(name: str, metrics: dict, split: str, topk: int) -> dict:
    keys = ("top1", f"top{topk}", "auc_macro", "f1_macro", "loss")
    return {"member": name, **{k: metrics[f"{split}_{k}"] for k in dict.fromkeys(keys) if f"{split}_{k}" in metrics}}
