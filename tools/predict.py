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

    import numpy as np
    import torch
    import torch.nn.functional as F

    from engine.workflows.predict import input_batches, read_new_samples, write_predictions

    cfg, ctx, module, device = load_run_model(args.run, args.checkpoint, overrides)
    rows, paths = read_new_samples(cfg, args.manifest, args.root, ctx.tokenizer is not None)
    probs = []
    with torch.no_grad():
        for inputs in input_batches(cfg, ctx, rows, paths, args.batch_size):
            logits = module(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
            probs.append(F.softmax(logits, dim=1).cpu().numpy())
    probs = np.concatenate(probs) if probs else np.zeros((0, len(ctx.classes)), np.float32)
    out = args.out or args.run / "predict" / f"{args.manifest.stem}.csv"
    write_predictions(out, rows, cfg.data.image_column, ctx.classes, probs)
    print(f"wrote {out}: {len(rows)} predictions")
    return probs


def load_run_model(run: Path, checkpoint: str, overrides: list[str]):
    """(config, data context, the model in eval mode with the checkpoint's weights, its device), fp32."""
    from engine.data.dataset import DataContext
    from engine.models import create_model
    from engine.training.checkpoint import load_weights, peek_state
    from engine.training.distributed import init_distributed
    from engine.training.wrap import wrap_model
    from evaluate import load_run_config, without_batch_arithmetic

    cfg = without_batch_arithmetic(load_run_config(run, [*overrides, "--train.precision=fp32"]))
    peek_state(run / "checkpoints", checkpoint)
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length, required_splits=("train",))
    dist = init_distributed()
    model = create_model(cfg.model, len(ctx.classes), len(cfg.data.numeric_columns), ctx.tabular.cardinalities)
    engine, _, _ = wrap_model(model, cfg, dist.device, "fp32", dist.world, 1, cfg.optim.lr)
    load_weights(engine, run / "checkpoints", checkpoint)
    return cfg, ctx, engine.module.eval(), dist.device


if __name__ == "__main__":
    main()
