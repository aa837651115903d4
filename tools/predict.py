"""Predict classes for new raw samples with a trained run: no cache, no labels needed.

    python tools/predict.py --run runs/demo --manifest new.csv [--root DIR] [--out preds.csv] [--checkpoint best]

new.csv has the run's image column (paths relative to --root, default its own folder), its text column and
tabular columns; label and split columns are not needed. Preprocessing is the evaluation path of the PIL
backend (engine/workflows/predict.py). Writes --out (default RUN/predict/<manifest name>.csv): row, image,
pred, prob, prob_<class> per class. See docs/workflows.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine.errors import exit_on_user_error  # noqa: E402


@exit_on_user_error
def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder (config.yaml, checkpoints/)")
    ap.add_argument("--manifest", type=Path, required=True, help="CSV or JSON Lines of new samples")
    ap.add_argument("--root", type=Path, default=None, help="folder the image paths are relative to")
    ap.add_argument("--out", type=Path, default=None, help="predictions CSV")
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--batch-size", type=int, default=32)
    args, overrides = ap.parse_known_args(argv)

    from engine.workflows.predict import read_new_samples, write_predictions

    cfg, run, module, device = load_run_model(args.run, args.checkpoint, overrides)
    rows, _ = read_new_samples(cfg, args.manifest, args.root, run.tokenizer is not None)
    probs = run.predict(rows, args.root or args.manifest.parent, args.batch_size)
    out = args.out or args.run / "predict" / f"{args.manifest.stem}.csv"
    write_predictions(out, rows, cfg.data.image_column, run.classes, probs)
    print(f"wrote {out}: {len(rows)} predictions")
    return probs


def load_run_model(run: Path, checkpoint: str, overrides: list[str]):
    """(config, the loaded run -- classes, tokenizer, tabular statistics --, its model in eval mode, its device), fp32:
    ``engine.load_run``, which reads the run folder only (no manifest, no DeepSpeed)."""
    from engine import load_run

    loaded = load_run(run, checkpoint, overrides)
    return loaded.cfg, loaded, loaded.model, next(loaded.model.parameters()).device


if __name__ == "__main__":
    main()
