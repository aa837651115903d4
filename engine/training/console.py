"""What a run prints (rank 0, stdout): one line per epoch and a summary at the end, as timm and the HF Trainer do.

    epoch 2/4 [finetune]  train_loss 1.2041  val_loss 1.0873  val_top1 0.6250  * new best val_top1  12.4 s  85 img/s
    done: best epoch 3 (val_top1 0.7500); test: test_loss 0.8112  test_top1 0.7500 ...; run folder runs/demo

The numbers are those of metrics.jsonl, test_metrics.json and summary.json; this only formats them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

# classification and retrieval keys worth a glance, in this order; a split's others stay in the files
_SHOWN = ("loss", "top1", "top3", "top5", "auc_macro", "f1_macro", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum",
          "median_rank")


def _metrics(values: dict, split: str, must: Optional[str] = None) -> list[str]:
    keys = [f"{split}_{k}" for k in _SHOWN if f"{split}_{k}" in values]
    if must and must in values and must not in keys:
        keys.append(must)
    return [f"{k} {values[k]:.4f}" for k in keys if isinstance(values[k], (int, float))]


def epoch_line(record: dict, epochs: int, metric: str, improved: bool) -> str:
    """One epoch's record (metrics.jsonl) as one line; ``improved``: ``metric`` beat the best so far."""
    parts = [f"epoch {record['epoch']}/{epochs} [{record.get('stage', '')}]"]
    if "train_loss" in record:
        parts.append(f"train_loss {record['train_loss']:.4f}")
    parts += _metrics(record, "val", metric)
    if improved:
        parts.append(f"* new best {metric}")
    parts.append(f"{record.get('epoch_time_s', float('nan')):.1f} s")
    parts.append(f"{record.get('images_per_s', float('nan')):.0f} img/s")
    return "  ".join(parts)


def final_summary(summary: dict, metric: str, run_path: Path) -> str:
    """The end of a run: its best epoch and score, the test metrics (when scored), where its files are."""
    state = summary.get("state", {})
    score = state.get("best_metric")
    lines = [f"done: {summary.get('epochs')} epochs; best epoch {state.get('best_epoch')}"
             + (f" ({metric} {score:.4f})" if isinstance(score, (int, float)) else "")]
    if summary.get("test"):
        lines.append("test (best weights): " + "  ".join(_metrics(summary["test"], "test", metric.replace("val_", "test_", 1))))
    lines.append(f"run folder: {run_path}  (metrics.jsonl, summary.json, curves.png, checkpoints/)")
    return "\n".join(lines)
