"""Print a run's per-epoch validation metrics and its summary: `python tools/show_metrics.py runs/demo`."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import RunFolderError, exit_on_user_error  # noqa: E402  (after the path set-up above)


def columns(records: list[dict]) -> tuple[str, ...]:
    """The table's columns; the top-k column is whichever ``val_top{eval.topk}`` the run logged."""
    topk = sorted({k for r in records for k in r if re.fullmatch(r"val_top\d+", k) and k != "val_top1"})
    return ("epoch", "train_loss", "val_loss", "val_top1", *topk, "val_auc_macro", "val_f1_macro", "images_per_s")


def format_table(records: list[dict]) -> str:
    cols = columns(records)
    lines = ["  ".join(f"{c:>13}" for c in cols)]
    for r in records:
        lines.append("  ".join(f"{r.get(c, float('nan')):>13.4f}" if c != "epoch" else f"{r['epoch']:>13d}" for c in cols))
    return "\n".join(lines)


@exit_on_user_error  # no such run, or no epoch finished yet: one line, exit 2
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", type=Path)
    run = ap.parse_args(argv).run_dir
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        raise RunFolderError(f"{metrics} does not exist: has the run finished an epoch (is {run} a run folder)?")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    print(format_table(records))
    summary = run / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        print(f"\nfinal: {json.dumps(s['final'])}\nbest:  {json.dumps(s['best'])}")


if __name__ == "__main__":
    main()
