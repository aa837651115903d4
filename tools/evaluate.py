"""Evaluate a run's checkpoint on a split; writes
RUN_DIR/eval/<split>_<checkpoint>[_masked-<m>]_{metrics.json,per_class.csv,confusion.csv,confusion.png,predictions.csv,probs.npz}.

    python tools/evaluate.py --run runs/demo [--split test] [--checkpoint best|last] [--section.key=value ...]
    deepspeed --num_gpus 2 tools/evaluate.py --run runs/demo     # same metrics on any number of ranks

The config is rebuilt from RUN_DIR/config.yaml (overrides such as
--loader.num_workers=0 apply on top), the model from the config, and the
weights are loaded from RUN_DIR/checkpoints/<checkpoint>: its model.safetensors (a weights-only tag, 'best' by
default) or DeepSpeed's model file (a full tag, 'last').
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.errors import exit_on_user_error  # noqa: E402  (after the path set-up above)


def load_run_config(run: Path, overrides: list[str]):
    from engine.config import load_config
    from engine.errors import RunFolderError

    if not (run / "config.yaml").is_file():
        raise RunFolderError(f"--run {run}: no config.yaml there; is it a run folder (run.output_dir/run.name)?")
    return load_config(run / "config.yaml", overrides)


_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def without_batch_arithmetic(cfg):
    """The run's config minus DeepSpeed batch sizes pinned in ``deepspeed.extra``: they tie the config to the
    training world size, and evaluation runs on any number of ranks without training a step."""
    import dataclasses

    extra = {k: v for k, v in cfg.deepspeed.extra.items() if k not in _BATCH_KEYS}
    return dataclasses.replace(cfg, deepspeed=dataclasses.replace(cfg.deepspeed, extra=extra))


def check_config_matches_checkpoint(run: Path, checkpoint: str) -> None:
    """config.yaml (before overrides) must describe the checkpoint's model and data (the checkpoint keeps its own copy)."""
    import json

    from engine.errors import CheckpointError
    from engine.training.checkpoint import checkpoint_config
    from engine.training.preflight import model_differences

    saved = checkpoint_config(run / "checkpoints", checkpoint)
    if saved is None:  # written before checkpoints kept their config
        return
    now = json.loads(json.dumps(load_run_config(run, []).to_dict()))
    diffs = [f"{k}: {old!r} in the checkpoint, {new!r} in config.yaml" for k, old, new in model_differences(saved, now)]
    if saved.get("data", {}).get("manifest") != now["data"]["manifest"]:
        diffs.append(f"data.manifest: {saved['data'].get('manifest')!r} in the checkpoint, {now['data']['manifest']!r} in "
                     "config.yaml")
    if diffs:
        raise CheckpointError(f"{run / 'config.yaml'} does not describe checkpoint '{checkpoint}': " + "; ".join(diffs))


def evaluate_run(run: Path, split: str = "val", checkpoint: str = "best", overrides: list[str] | None = None) -> dict:
    from engine import hardware
    from engine.data.context import DataContext
    from engine.data.loaders import create_loader
    from engine.models import create_model
    from engine.training.checkpoint import load_weights, peek_state
    from engine.training.distributed import init_distributed
    from engine.training.loop import predict, split_metrics
    from engine.training.step import DevicePipe
    from engine.training.wrap import wrap_model

    hardware.check_local_card()  # a card the installed torch has no kernels for: refused, naming the build to install
    cfg = without_batch_arithmetic(load_run_config(run, overrides or []))
    peek_state(run / "checkpoints", checkpoint)  # no such checkpoint: say so before DeepSpeed starts
    check_config_matches_checkpoint(run, checkpoint)
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length, required_splits=("train", split))
    dist = init_distributed()
    model = create_model(cfg.model, len(ctx.classes), len(cfg.data.numeric_columns), ctx.tabular.cardinalities)
    precision = hardware.choose_precision(hardware.device_info(dist.device), cfg.train.precision)
    engine, _, _ = wrap_model(model, cfg, dist.device, precision, dist.world, 1, cfg.optim.lr)
    load_weights(engine, run / "checkpoints", checkpoint)
    pipe = DevicePipe.for_device(cfg, dist.device, precision)
    loader = create_loader(cfg, ctx, split, False, dist.rank, dist.world)
    if cfg.model.task == "retrieval":  # a dual encoder: recall@K both ways, ranks (and zero-shot with a prompt)
        from engine.training.retrieval import evaluate_retrieval

        metrics = evaluate_retrieval(engine, loader, pipe, ctx, cfg, dist, split)
        if dist.is_main:
            (run / "eval").mkdir(parents=True, exist_ok=True)
            (run / "eval" / f"{split}_{checkpoint}_metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    rows, labels, probs = predict(engine, loader, pipe, dist, len(ctx.classes))
    metrics = split_metrics(labels, probs, ctx.classes, cfg, split)
    if dist.is_main:
        from engine.workflows.reliance import eval_stem  # masked evaluations get their own files

        _write(run / "eval", eval_stem(split, checkpoint, cfg.model.mask_modalities), metrics, rows, labels, probs, ctx,
               split)
    return metrics


def _write(out: Path, stem: str, metrics: dict, rows, labels, probs, ctx, split: str) -> None:
    import numpy as np

    from engine.training.monitor import write_confusion
    from engine.workflows.predict import write_predictions

    classes = ctx.classes
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}_metrics.json").write_text(json.dumps(metrics, indent=2))
    # every class's probability, for ensembles, out-of-fold tables and distillation targets (engine/workflows/)
    np.savez(out / f"{stem}_probs.npz", rows=np.asarray(rows), labels=np.asarray(labels), probs=np.asarray(probs, np.float32),
             classes=np.asarray(classes, dtype=str))
    with open(out / f"{stem}_per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for c, m in metrics[f"{split}_per_class"].items():
            w.writerow([c, m["precision"], m["recall"], m["f1"], m["support"]])
    write_confusion(out / f"{stem}_confusion", metrics[f"{split}_confusion_matrix"], classes)
    write_predictions(out / f"{stem}_predictions.csv", [ctx.manifest.rows[int(r)] for r in rows], ctx.cfg.image_column,
                      classes, probs, row_ids=[int(r) for r in rows], labels=labels)


@exit_on_user_error  # a missing run/checkpoint, config, data: one line naming it, exit 2
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder (holds config.yaml and checkpoints/)")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args(argv)
    metrics = evaluate_run(args.run, args.split, args.checkpoint, overrides)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(scalars, indent=2))
    return metrics


if __name__ == "__main__":
    main()
