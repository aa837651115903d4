"""How much a run relies on each modality: evaluate it with all present, then each masked in turn.

    python tools/reliance.py --run runs/demo [--split val|test] [--checkpoint best|last] [--section.key=value ...]

Writes RUN_DIR/eval/reliance_<split>_<checkpoint>.{csv,md,json} (metric per masking and its drop against all
present) beside each evaluation's own files (<split>_<checkpoint>[_masked-<m>]_metrics.json ...), and prints
the table. Works under the DeepSpeed launcher like tools/evaluate.py. See docs/workflows.md.
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
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder (holds config.yaml and checkpoints/)")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args(argv)

    from evaluate import evaluate_run, load_run_config

    from engine.workflows.reliance import active_modalities, reliance_rows, write_reliance

    cfg = load_run_config(args.run, overrides)
    modalities = active_modalities(cfg)  # a retrieval run is refused here, before any evaluation
    results = {}
    for masked in [[]] + [[m] for m in modalities]:
        metrics = evaluate_run(args.run, args.split, args.checkpoint, [*overrides, f"--model.mask_modalities={masked}"])
        results["+".join(masked) or "none"] = metrics
    rows = reliance_rows(results, args.split)
    if int(os.environ.get("RANK", 0)) == 0:
        meta = {"run": str(args.run), "split": args.split, "checkpoint": args.checkpoint,
                "samples": results["none"].get(f"{args.split}_num_samples")}
        paths = write_reliance(args.run / "eval", f"reliance_{args.split}_{args.checkpoint}", rows, meta)
        print(paths[1].read_text())
        print("wrote " + ", ".join(map(str, paths)))
    return rows


if __name__ == "__main__":
    main()
