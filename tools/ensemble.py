"""Score the average of several runs' class probabilities on one split.

    python tools/ensemble.py --runs runs/a runs/b runs/c --out runs/ensemble_abc [--split test] [--checkpoint best]

Members must share their classes (refused naming the runs otherwise). Each member's evaluation is reused from
RUN/eval/<split>_<checkpoint>_probs.npz when it is newer than the checkpoint, else run first (tools/evaluate.py).
Writes OUT/ensemble_<split>.{csv,md} (every member's metrics and the ensemble's), _metrics.json and _probs.npz.
Works under the DeepSpeed launcher like tools/evaluate.py (`deepspeed --num_gpus N tools/ensemble.py ...`): the
members' evaluations are sharded over the ranks, rank 0 writes. See docs/workflows.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine.errors import exit_on_user_error  # noqa: E402


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders (two or more)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the ensemble's files")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args(argv)

    from evaluate import evaluate_run, load_run_config

    from engine.training.distributed import barrier
    from engine.training.loop import split_metrics
    from engine.workflows.ensemble import (
        EnsembleError,
        Predictions,
        average,
        check_same_classes,
        is_fresh,
        probs_file,
        table_row,
        write_ensemble,
    )

    if len(args.runs) < 2 or len(set(args.runs)) < len(args.runs):
        raise EnsembleError(f"--runs: name two or more different run folders, got {[str(r) for r in args.runs]}")
    check_same_classes(args.runs)  # before any evaluation
    cfg = load_run_config(args.runs[0], overrides)
    # Under the launcher every rank takes part in each evaluation and rank 0 writes its probs.npz: which members to
    # evaluate is decided before any is written (so all ranks agree), and read back once rank 0 has written them.
    stale = [run for run in args.runs if not is_fresh(run, args.split, args.checkpoint)]
    for run in stale:
        evaluate_run(run, args.split, args.checkpoint, overrides)
    barrier()
    members = {str(run): Predictions.load(probs_file(run, args.split, args.checkpoint)) for run in args.runs}
    table = []
    ensemble = average(members)
    metrics = split_metrics(ensemble.labels, ensemble.probs, ensemble.classes, cfg, args.split)
    for name, m in members.items():
        table.append(table_row(name, split_metrics(m.labels, m.probs, m.classes, cfg, args.split), args.split, cfg.eval.topk))
    table.append(table_row("ensemble (mean)", metrics, args.split, cfg.eval.topk))
    if int(os.environ.get("RANK", 0)) == 0:
        paths = write_ensemble(args.out, args.split, table, ensemble, {"members": list(members), **metrics})
        print(paths[1].read_text())
        print("wrote " + ", ".join(map(str, paths)))
    return metrics


if __name__ == "__main__":
    main()
