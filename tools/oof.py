"""Out-of-fold class probabilities for every train row: K runs, each holding one stratified fold out.

    python tools/oof.py --config X.yaml --folds K --out DIR [--launcher "deepspeed --num_gpus 2"] [--section.key=value ...]

Fold k is the recipe run with --data.folds=K --data.fold=k (its val split is fold k of the train rows), as
DIR/runs/fold<k> (the sweep machinery: resumable, a finished fold is skipped; the recipe's caches are built once
and serve every fold). Writes DIR/folds.csv (row, fold), scores each fold's best checkpoint on its held-out
rows, then DIR/oof.csv (row, label, fold, prob_<class>...), DIR/oof.npz, DIR/oof_metrics.json (metrics of all
OOF predictions together) and DIR/results.{csv,md,png} (per fold). See docs/workflows.md and
engine/workflows/oof.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine.errors import exit_on_user_error  # noqa: E402


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="recipe (its train split is folded)")
    ap.add_argument("--folds", type=int, required=True, help="K")
    ap.add_argument("--out", type=Path, required=True, help="OOF folder")
    ap.add_argument("--launcher", default="", help='command that starts a run, e.g. "deepspeed --num_gpus 2" (default: python)')
    args, overrides = ap.parse_known_args(argv)

    import numpy as np
    from evaluate import evaluate_run

    from engine.config import load_config
    from engine.workflows.ensemble import Predictions, is_fresh, probs_file
    from engine.workflows.oof import OofError, fold_assignment, write_folds, write_oof
    from engine.workflows.results import write_results
    from engine.workflows.sweep import SweepConfig, Variant, run_sweep

    cfg = load_config(args.config, overrides)
    train, folds = fold_assignment(cfg, args.folds)
    write_folds(args.out, train, folds)
    variants = [Variant(f"fold{f}", [f"--data.folds={args.folds}", f"--data.fold={f}"], f"fold{f}")
                for f in range(args.folds)]
    sweep = SweepConfig(base=args.config, out=str(args.out), launcher=args.launcher, overrides=overrides)
    run_sweep(sweep, variants)

    fold_of = dict(zip(train.tolist(), folds.tolist()))
    parts, classes = [], None
    for f, v in enumerate(variants):
        run = sweep.runs_dir / v.name
        if not is_fresh(run, "val", "best"):
            evaluate_run(run, "val", "best")
        p = Predictions.load(probs_file(run, "val", "best"))
        original = np.asarray(p.rows, dtype=np.int64)  # the folds select rows of the recipe's own manifest
        if any(fold_of.get(int(r)) != f for r in original):
            raise OofError(f"{run}: scored rows that are not fold {f}'s held-out rows")
        if classes is not None and p.classes != classes:
            raise OofError(f"{run}: classes {p.classes} differ from fold 0's {classes} (a class only in the val split?)")
        classes = p.classes
        parts.append((original, p.labels, np.full(len(original), f), p.probs))
    rows, labels, fold_ids, probs = (np.concatenate(t) for t in zip(*parts))
    if len(rows) != len(train) or set(rows.tolist()) != set(train.tolist()):
        raise OofError(f"the folds scored {len(rows)} rows, the train split has {len(train)}")
    oof_csv = write_oof(args.out, classes, rows, labels, fold_ids, probs)
    from engine.training.loop import split_metrics

    metrics = split_metrics(labels, probs, classes, cfg, "oof")
    (args.out / "oof_metrics.json").write_text(json.dumps(metrics, indent=2))
    write_results(args.out, sweep.runs_dir, [v.name for v in variants], [v.name for v in variants])
    print((args.out / "results.md").read_text())
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=2))
    print(f"wrote {oof_csv} ({len(rows)} train rows, {args.folds} folds), oof.npz, oof_metrics.json, results.*")
    return metrics


if __name__ == "__main__":
    main()
