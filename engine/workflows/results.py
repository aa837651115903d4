"""Comparison tables of finished runs: results.csv (one row per run), results.md, results.png.

Each row comes from one run's summary.json, with the metrics named as there: ``val_*`` of the best epoch
(``best``), ``test_*`` of the test split scored on the best weights (``test``), then ``best_epoch``,
``wall_time_s``, ``train_images_per_s``, ``num_parameters``, ``peak_memory_mb``. Validation metrics the summary
does not list (retrieval: ``val_i2t_r1``...) come from the best epoch's record in metrics.jsonl. Rows of one
group (a variant at several ``run.seed`` values) are shown as mean +- sample std (n - 1) over the seeds.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

COST_KEYS = ("best_epoch", "wall_time_s", "train_images_per_s", "num_parameters", "peak_memory_mb")
_SKIP_SUFFIXES = ("_num_samples", "_classes_evaluated")  # counts, not metrics (summary.json's 'scored' has them)


def run_row(folder: Path) -> Optional[dict]:
    """The metrics of one finished run (None when it has no summary.json yet)."""
    p = folder / "summary.json"
    if not p.is_file():
        return None
    s = json.loads(p.read_text())
    best = s.get("best", {})
    row = {k: v for k, v in best.items() if k.startswith("val_") and _is_number(v)}
    record = next((r for r in _records(folder) if r.get("epoch") == best.get("epoch")), {})
    row.update({k: v for k, v in record.items() if k.startswith("val_") and k not in row and _is_number(v)
                and not k.endswith(_SKIP_SUFFIXES)})
    row.update({k: v for k, v in (s.get("test") or {}).items() if k.startswith("test_") and _is_number(v)
                and not k.endswith(_SKIP_SUFFIXES)})
    row["best_epoch"] = best.get("epoch")
    row.update({k: s[k] for k in COST_KEYS[1:] if k in s})
    return row


def _records(folder: Path) -> list[dict]:
    p = folder / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def metric_columns(rows: list[dict]) -> list[str]:
    """val_* then test_* (each in the order the summaries list them, loss last), then the cost columns."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    ordered = []
    for prefix in ("val_", "test_"):
        ordered += sorted((k for k in seen if k.startswith(prefix)), key=lambda k: k.endswith("_loss"))  # stable
    return ordered + [k for k in COST_KEYS if k in seen]


def aggregate(rows: list[dict], groups: list[str], columns: list[str]) -> list[dict]:
    """Per group, in first-seen order: n, and per column (mean, std) over its rows (std NaN for one row)."""
    out = []
    for g in dict.fromkeys(groups):
        members = [r for r, gr in zip(rows, groups) if gr == g]
        agg = {"variant": g, "n": len(members)}
        for c in columns:
            vals = np.array([r[c] for r in members if _is_number(r.get(c))], dtype=float)
            agg[c] = (float(vals.mean()) if len(vals) else math.nan, float(vals.std(ddof=1)) if len(vals) > 1 else math.nan)
        out.append(agg)
    return out


def fmt(column: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if column == "num_parameters":
        return f"{v / 1e6:.2f}M"
    if column == "best_epoch" or column.endswith("_rank"):
        return f"{v:.0f}"
    if column in ("wall_time_s", "train_images_per_s", "peak_memory_mb"):
        return f"{v:.1f}"
    return f"{v:.4f}"


def markdown(rows: list[dict], names: list[str], groups: list[str], columns: list[str]) -> str:
    """The per-run table; with repeats (a group of several runs), the mean +- std table first."""
    parts = []
    if len(set(groups)) < len(groups):
        agg = aggregate(rows, groups, columns)
        parts.append(f"Mean ± std (sample std, n - 1) over the seeds of each variant:\n\n"
                     f"| variant | n | {' | '.join(columns)} |\n|{' --- |' * (len(columns) + 2)}\n")
        for a in agg:
            cells = [fmt(c, a[c][0]) + ("" if math.isnan(a[c][1]) else f" ± {fmt(c, a[c][1])}") for c in columns]
            parts[-1] += f"| {a['variant']} | {a['n']} | {' | '.join(cells)} |\n"
        parts.append("Each run:\n\n")
    parts.append(f"| variant | {' | '.join(columns)} |\n|{' --- |' * (len(columns) + 1)}\n")
    for name, r in zip(names, rows):
        parts[-1] += f"| {name} | {' | '.join(fmt(c, r.get(c)) for c in columns)} |\n"
    return "\n".join(parts)


def write_results(out: Path, runs_dir: Path, names: list[str], groups: list[str]) -> tuple[list[str], list[str]]:
    """Write results.csv / .md / .png (and results_mean_std.csv with repeats) for the finished ones of ``names``;
    returns (finished, missing)."""
    found = [(n, g, run_row(runs_dir / n)) for n, g in zip(names, groups)]
    done = [(n, g, r) for n, g, r in found if r is not None]
    missing = [n for n, _, r in found if r is None]
    if not done:
        return [], missing
    names_, groups_, rows = (list(t) for t in zip(*done))
    columns = metric_columns(rows)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", *columns])
        for n, r in zip(names_, rows):
            w.writerow([n, *("" if r.get(c) is None else r[c] for c in columns)])
    agg = aggregate(rows, groups_, columns)
    if any(a["n"] > 1 for a in agg):  # repeats (seeds): mean and std per variant, machine-readable too
        with open(out / "results_mean_std.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["variant", "n", *(f"{c}_{s}" for c in columns for s in ("mean", "std"))])
            for a in agg:
                w.writerow([a["variant"], a["n"], *(v for c in columns for v in a[c])])
    note = f"\nNot finished yet: {', '.join(missing)}\n" if missing else ""
    (out / "results.md").write_text(markdown(rows, names_, groups_, columns) + note)
    plot_results(agg, out / "results.png")
    return names_, missing


def plot_results(agg: list[dict], path: Path) -> None:
    """One bar group per variant: val and test top-1 and macro AUC (those present), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("val_top1", "test_top1", "val_auc_macro", "test_auc_macro", "val_i2t_r1", "val_t2i_r1")
               if any(m in a for a in agg)]
    if not metrics:
        return
    x = np.arange(len(agg))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(agg) * max(1, len(metrics) / 2)), 4))
    for i, m in enumerate(metrics):
        means = [a.get(m, (math.nan, math.nan))[0] for a in agg]
        stds = [a.get(m, (math.nan, math.nan))[1] for a in agg]
        errors = None if all(math.isnan(s) for s in stds) else [0 if math.isnan(s) else s for s in stds]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, means, width, label=m, yerr=errors, capsize=3)
    ax.set_xticks(x, [a["variant"] for a in agg], rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score",
           title="sweep results" + (" (mean ± std over seeds)" if any(a["n"] > 1 for a in agg) else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
