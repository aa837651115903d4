"""Print a run's per-epoch validation metrics and its summary: `python tools/show_metrics.py runs/demo`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top3", "val_auc_macro", "val_f1_macro", "images_per_s")


def format_table(records: list[dict]) -> str:
    lines = ["  ".join(f"{c:>13}" for c in COLUMNS)]
    for r in records:
        lines.append("  ".join(f"{r.get(c, float('nan')):>13.4f}" if c != "epoch" else f"{r['epoch']:>13d}" for c in COLUMNS))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", type=Path)
    run = ap.parse_args().run_dir
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        raise SystemExit(f"{metrics} does not exist: has the run finished an epoch?")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    print(format_table(records))
    summary = run / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        print(f"\nfinal: {json.dumps(s['final'])}\nbest:  {json.dumps(s['best'])}")


if __name__ == "__main__":
    main()
