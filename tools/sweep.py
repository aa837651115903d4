"""Run named variants of one recipe (x grid points) as normal runs, one after another; tabulate their metrics.

    python tools/sweep.py --config BASE.yaml --variants VARIANTS.yaml --out DIR [--grid key=v1,v2 ...]
                          [--launcher "deepspeed --num_gpus 2 --master_port 29600"] [--section.key=value ...]

VARIANTS.yaml maps each variant to dotted overrides (``image_only: {model.text_encoder: null}``); every
``--grid`` multiplies them (``image_only__optim.lr=0.001``); ``--grid run.seed=0,1,2`` repeats each variant,
and the tables then give mean +- std over the seeds. Extra ``--section.key=value`` apply to every variant.
Every variant's config is loaded before anything runs (an unknown key fails naming the variant). Runs go to
DIR/runs/<variant>, logs to DIR/logs/, tables to DIR/results.{csv,md,png}, timings to DIR/sweep_log.jsonl.
Run it again to continue a stopped sweep: finished variants are skipped, a killed one resumes.
See docs/workflows.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import exit_on_user_error  # noqa: E402


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="base recipe")
    ap.add_argument("--variants", help="YAML: variant name -> {dotted.key: value} (default: the base alone)")
    ap.add_argument("--out", required=True, type=Path, help="sweep folder")
    ap.add_argument("--grid", action="append", default=[], help="key=v1,v2,...: every variant at every value (repeatable)")
    ap.add_argument("--launcher", default="", help='command that starts a run, e.g. "deepspeed --num_gpus 2" (default: python)')
    ap.add_argument("--only", default="", help="comma-separated variant names to run now (the tables cover all)")
    ap.add_argument("--max-runs", type=int, default=None, help="stop after running this many variants")
    ap.add_argument("--dry-run", action="store_true", help="list the variants and check their configs; run nothing")
    args, overrides = ap.parse_known_args(argv)

    from engine.workflows.results import write_results
    from engine.workflows.sweep import SweepConfig, SweepRunFailed, planned_variants, run_sweep

    sweep = SweepConfig(base=args.config, out=str(args.out), variants=args.variants, grid=args.grid,
                        launcher=args.launcher, overrides=overrides, max_runs=args.max_runs,
                        only=[s for s in args.only.split(",") if s], dry_run=args.dry_run)
    if sweep.dry_run:
        run_sweep(sweep)
        return 0
    failed = None
    try:
        run_sweep(sweep)
    except SweepRunFailed as e:  # the run's own output says why; the finished variants are tabulated anyway
        failed = e
    variants = planned_variants(sweep)
    done, missing = write_results(args.out, sweep.runs_dir, [v.name for v in variants], [v.group for v in variants])
    if done:
        print((args.out / "results.md").read_text())
        print(f"wrote {args.out / 'results.csv'}, results.md, results.png")
    if failed is not None:
        print(f"sweep: a run failed: {failed}", file=sys.stderr)
        return 1
    if missing:
        print(f"sweep: {len(missing)} variants not finished yet ({', '.join(missing)}); run the same command again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
