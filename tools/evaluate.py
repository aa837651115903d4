"""Evaluate a run's checkpoint on a split; writes RUN_DIR/eval/<split>_<checkpoint>_{metrics.json,per_class.csv,predictions.csv}.

    python tools/evaluate.py --run runs/demo [--split test] [--checkpoint best|last] [--section.key=value ...]
    deepspeed --num_gpus 2 tools/evaluate.py --run runs/demo     # same metrics on any number of ranks

The config is rebuilt from RUN_DIR/config.yaml (overrides such as
--loader.num_workers=0 apply on top), the model from the config, and the
weights are loaded through DeepSpeed from RUN_DIR/checkpoints/<checkpoint>.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_run_config(run: Path, overrides: list[str]):
    from engine.config import load_config

    return load_config(run / "config.yaml", overrides)


_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def without_batch_arithmetic(cfg):
    """The run's config minus DeepSpeed batch sizes pinned in ``deepspeed.extra``: they tie the config to the
    training world size, and evaluation runs on any number of ranks without training a step."""
    import dataclasses

    extra = {k: v for k, v in cfg.deepspeed.extra.items() if k not in _BATCH_KEYS}
    return dataclasses.replace(cfg, deepspeed=dataclasses.replace(cfg.deepspeed, extra=extra))


def evaluate_run(run: Path, split: str = "val", checkpoint: str = "best", overrides: list[str] | None = None) -> dict:
    from engine import hardware
    from engine.data.dataset import DataContext
    from engine.data.loaders import create_loader
    from engine.models import create_model
    from engine.training.checkpoint import load_weights
    from engine.training.distributed import init_distributed
    from engine.training.loop import predict, split_metrics
    from engine.training.step import DevicePipe
    from engine.training.wrap import wrap_model

    cfg = without_batch_arithmetic(load_run_config(run, overrides or []))
    dist = init_distributed()
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length, required_splits=("train", split))
    model = create_model(cfg.model, len(ctx.classes), len(cfg.data.numeric_columns), ctx.tabular.cardinalities)
    precision = hardware.choose_precision(hardware.device_info(dist.device), cfg.train.precision)
    engine, _, _ = wrap_model(model, cfg, dist.device, precision, dist.world, 1, cfg.optim.lr)
    load_weights(engine, run / "checkpoints", checkpoint)
    pipe = DevicePipe.for_device(cfg, dist.device, precision)
    loader = create_loader(cfg, ctx, split, False, dist.rank, dist.world)
    rows, labels, probs = predict(engine, loader, pipe, dist, len(ctx.classes))
    metrics = split_metrics(labels, probs, ctx.classes, cfg, split)
    if dist.is_main:
        _write(run / "eval", f"{split}_{checkpoint}", metrics, rows, labels, probs, ctx.classes, cfg.eval.topk, split)
    return metrics


def _write(out: Path, stem: str, metrics: dict, rows, labels, probs, classes: list[str], topk: int, split: str) -> None:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}_metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / f"{stem}_per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for c, m in metrics[f"{split}_per_class"].items():
            w.writerow([c, m["precision"], m["recall"], m["f1"], m["support"]])
    k = min(topk, len(classes))
    top = np.argsort(-probs, axis=1)[:, :k]
    with open(out / f"{stem}_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label"] + [col for j in range(k) for col in (f"pred{j + 1}", f"prob{j + 1}")])
        for r, y, t, p in zip(rows, labels, top, probs):
            w.writerow([int(r), classes[y]] + [v for j in t for v in (classes[j], f"{p[j]:.6f}")])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder (holds config.yaml and checkpoints/)")
    ap.add_argument("--split", default="val", help="val or test")
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args(argv)
    from engine.config import ConfigError
    from engine.train import input_errors

    try:
        metrics = evaluate_run(args.run, args.split, args.checkpoint, overrides)
    except (ConfigError, FileNotFoundError, *input_errors()) as e:  # one message naming the file, not a traceback
        ap.exit(2, f"error: {e}\n")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(scalars, indent=2))
    return metrics


if __name__ == "__main__":
    main()
