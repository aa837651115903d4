"""The training loop: ``train()`` reads top to bottom; each piece it calls is short and testable."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine import hardware
from engine.config import Config
from engine.data.context import DataContext
from engine.data.loaders import create_loader
from engine.errors import ConfigError
from engine.inference import write_preprocessing
from engine.models import create_model
from engine.training.checkpoint import TrainState, load_checkpoint, load_weights, peek_state, save_checkpoint
from engine.training.console import epoch_line, final_summary
from engine.training.distill import load_teacher
from engine.training.distributed import (
    DistInfo,
    all_gather_cat,
    average_buffers,
    buffer_snapshot,
    init_distributed,
    restore_buffers,
)
from engine.training.metrics import RETRIEVAL_METRICS, classification_metrics
from engine.training.monitor import Monitor, plot_curves, write_confusion
from engine.training.optim import loss_class_weights
from engine.training.preflight import check_run
from engine.training.run_dir import RunDir, provenance
from engine.training.run_stats import run_statistics
from engine.training.stages import keep_frozen_norms, stage_config, stage_lr, stage_named, stage_of
from engine.training.step import DevicePipe, NonFiniteLoss, StepContext, train_step
from engine.training.wrap import release, wrap_model

log = logging.getLogger(__name__)

class Preempted(Exception):
    """Raised by ``stop_after_*``: stands in for a kill, to test that ``--resume`` continues exactly."""


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    import random

    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def train(cfg: Config, resume: bool = False, stop_after_epoch: Optional[int] = None,
          stop_after_step: Optional[int] = None) -> dict:
    """Train, evaluate each epoch, checkpoint; return the summary written to summary.json."""
    hardware.check_local_card()  # a card the installed torch has no kernels for: refused, naming the build to install
    checked = check_run(cfg, resume)  # the user's inputs, before DeepSpeed starts (minutes on a busy machine)
    ctx, precision = checked.ctx, checked.precision
    dist = init_distributed()
    seed_everything(cfg.run.seed, dist.rank, cfg.run.deterministic)
    run = RunDir(cfg, dist.is_main)
    prov = provenance(cfg, ctx.manifest.version, ctx.classes, dist.world,
                      {"precision": precision, "class_pool": ctx.manifest.class_pool_counts})
    if not resume:  # a resumed run's config.yaml is rewritten once its checkpoint has loaded, not by a failed start
        run.write_config(cfg, prov)
        if dist.is_main:  # class names, tabular statistics, tokenizer: engine.load_run needs no manifest or cache
            write_preprocessing(run.path, cfg, ctx)
    train_loader = create_loader(cfg, ctx, "train", True, dist.rank, dist.world)
    val_loader = create_loader(cfg, ctx, "val", False, dist.rank, dist.world)
    steps_per_epoch = _steps_per_epoch(cfg, train_loader)
    model = create_model(cfg.model, len(ctx.classes), len(cfg.data.numeric_columns), ctx.tabular.cardinalities)
    pipe = DevicePipe.for_device(cfg, dist.device, precision)
    teacher = load_teacher(cfg, ctx.classes, ctx.split("train").rows)  # train.distill_from, else None
    weights = loss_class_weights(ctx.split("train").labels, len(ctx.classes), cfg.train.class_weights)
    if cfg.train.class_weights != "none" and cfg.loader.balanced_sampling != "none":
        log.warning("train.class_weights=%s and loader.balanced_sampling=%s both correct for class imbalance: "
                    "together they over-correct; usually one of them is meant", cfg.train.class_weights,
                    cfg.loader.balanced_sampling)
    state = peek_state(run.checkpoints, "last") if resume else TrainState(stage=stage_of(cfg, 0).name)
    engine = _build_engine(model, cfg, dist, precision, steps_per_epoch, state.stage)
    if resume:
        state, loader_state = load_checkpoint(engine, run.checkpoints, "last", dist.rank, shared_fs=cfg.run.shared_fs)
        train_loader.load_state_dict(loader_state)
        run.write_config(cfg, prov)
        run.truncate_metrics(state.epoch)
    monitor = Monitor(cfg, run.path, dist.is_main, resume)

    def save_last() -> None:  # epoch ends and every train.checkpoint_every_steps updates
        _refuse_non_finite_weights(engine.module, state)  # a finite loss can hide non-finite gradients
        # The saved model gets the ranks' averaged BatchNorm statistics; the live ones stay each rank's own
        # (saved beside it for resume), so saving mid-epoch leaves the run's course unchanged.
        own = buffer_snapshot(engine.module)
        average_buffers(engine.module)
        save_checkpoint(engine, run.checkpoints, "last", state, train_loader.state_dict(), cfg.to_dict(), dist.rank, own)
        restore_buffers(engine.module, own)

    try:
        for epoch in range(state.epoch, cfg.train.epochs):
            if cfg.train.early_stopping_patience and state.bad_epochs >= cfg.train.early_stopping_patience:
                break  # checked first, so a run resumed after it stopped early does not train on
            if stage_of(cfg, epoch).name != state.stage:  # e.g. frozen -> finetune: re-wrap so the encoders really train
                release(engine)
                state.stage = stage_of(cfg, epoch).name
                engine = _build_engine(model, cfg, dist, precision, steps_per_epoch, state.stage)
            train_loader.set_epoch(epoch)
            t_epoch = time.perf_counter()  # training + validation: summary.json's wall_time_s sums these
            step = StepContext(pipe, stage_config(cfg, stage_named(cfg, state.stage)), len(ctx.classes), dist.rank,
                               weights, teacher)
            train_stats = train_epoch(engine, train_loader, EpochContext(step, dist, steps_per_epoch, monitor, save_last,
                                                                         stop_after_step), state, epoch)
            average_buffers(engine.module)  # one set of BatchNorm statistics for evaluation and the checkpoint
            val = evaluate(engine, val_loader, pipe, ctx, cfg, dist, "val")
            state.epoch = epoch + 1
            improved = _track_best(cfg, state, val)
            record = {"epoch": epoch + 1, "step": state.global_step, "stage": state.stage, **train_stats, **_scalars(val),
                      "epoch_time_s": time.perf_counter() - t_epoch}
            run.log_metrics(record, fresh=epoch == 0 and not resume)
            monitor.scalars(record, state.global_step)
            if dist.is_main:
                print(epoch_line(record, cfg.train.epochs, cfg.eval.metric, improved), flush=True)
            if improved:  # before 'last': a kill between the two must not leave 'last' naming a 'best' never written
                save_checkpoint(engine, run.checkpoints, "best", state, train_loader.state_dict(), cfg.to_dict(), dist.rank)
            save_last()
            if stop_after_epoch is not None and state.epoch >= stop_after_epoch:
                raise Preempted(f"stopped after epoch {state.epoch}")
    except Preempted as e:
        monitor.close()
        return {"preempted": str(e), "state": asdict(state)}
    return finish(engine, cfg, ctx, pipe, dist, run, state, monitor)


@dataclass
class EpochContext:
    """What ``train_epoch`` needs besides the engine, the loader, the run's state and the epoch number."""
    step: StepContext
    dist: DistInfo
    steps_per_epoch: int
    monitor: Optional[Monitor] = None
    save_last: Optional[Callable[[], None]] = None  # mid-epoch checkpoints (train.checkpoint_every_steps)
    stop_after_step: Optional[int] = None  # tests: stand in for a kill after this many updates


def train_epoch(engine, loader, ctx: EpochContext, state: TrainState, epoch: int) -> dict:
    cfg, dist = ctx.step.cfg, ctx.dist
    engine.train()
    keep_frozen_norms(engine.module)  # frozen parts' BatchNorm statistics stay fixed
    total = ctx.steps_per_epoch * cfg.train.grad_accum
    start = loader.batches_done  # > 0 when resuming mid-epoch
    losses, seen, wait, step_time, t0 = [], 0, 0.0, 0.0, time.perf_counter()
    bar = tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs} [{state.stage}]",
               disable=not dist.is_main, unit="batch", dynamic_ncols=True)
    t_wait = time.perf_counter()
    for i, batch in enumerate(_rng_neutral(loader) if start < total else (), start):
        t_step = time.perf_counter()
        wait += t_step - t_wait  # time the step waited for data
        result = train_step(engine, batch, ctx.step, epoch, i, state.global_step)
        losses.append(result.loss)
        seen += result.size
        step_time += time.perf_counter() - t_step
        bar.update(1)
        if result.boundary:
            state.global_step += 1
            ips = seen * dist.world / (time.perf_counter() - t0)
            # every update (tqdm redraws at most ~10 times a second): the mean of this epoch's last 20 batches
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{engine.get_lr()[0]:.2e}", img_s=f"{ips:.0f}",
                            refresh=False)
            if ctx.monitor is not None and (i // cfg.train.grad_accum) % cfg.train.log_every == 0:
                ctx.monitor.scalars({"train_loss_step": losses[-1], "lr": engine.get_lr()[0], "images_per_s": ips,
                                     **{f"loss_{k}": v.item() for k, v in result.parts.items()}}, state.global_step)
            every = cfg.train.checkpoint_every_steps
            if ctx.save_last and every and state.global_step % every == 0:
                ctx.save_last()  # mid-epoch: the loader's position goes with it
            if ctx.stop_after_step is not None and state.global_step >= ctx.stop_after_step:
                raise Preempted(f"stopped after step {state.global_step}")
        if i + 1 >= total:
            break
        t_wait = time.perf_counter()
    bar.close()
    elapsed = time.perf_counter() - t0
    n = max(len(losses), 1)
    return {"train_loss": float(np.mean(losses)) if losses else math.nan, "lr": float(engine.get_lr()[0]),
            "images_per_s": seen * dist.world / elapsed, "step_time_s": step_time / n, "data_wait_s": wait / n,
            "data_wait_frac": wait / elapsed}


def _rng_neutral(loader):
    """Yield the loader's batches without letting it draw from the global torch RNG.

    A DataLoader draws a base seed from it whenever an iterator starts; a run
    resumed mid-epoch starts its iterator at another point than the
    uninterrupted run, so dropout would see a different stream.
    """
    it = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(it, None)
        if batch is None:
            return
        yield batch


@torch.no_grad()
def predict(engine, loader, pipe: DevicePipe, dist: DistInfo, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gathered (row index, label, probabilities) over the whole split, each sample exactly once."""
    engine.eval()
    idx, labels, probs = [], [], []
    for batch in tqdm(loader, desc="eval", disable=not dist.is_main, unit="batch", leave=False):
        inputs, targets, batch = pipe(batch, False, 0, num_classes)
        logits = engine(**inputs).logits.float()
        idx.append(batch.index)
        labels.append(targets)
        probs.append(F.softmax(logits, dim=1))
    idx, labels, probs = (all_gather_cat(torch.cat(t)).cpu().numpy() for t in (idx, labels, probs))
    _, first = np.unique(idx, return_index=True)  # drop the padding duplicates of the last shards
    return idx[first], labels[first], probs[first]


def split_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str], cfg: Config, split: str) -> dict:
    """Loss (fp32) and classification metrics of gathered predictions, keys prefixed by the split."""
    loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).double().clamp_min(1e-12)), torch.from_numpy(labels)).item())
    metrics = classification_metrics(probs, labels, classes, cfg.eval.topk)
    return {f"{split}_loss": loss, **{f"{split}_{k}": v for k, v in metrics.items()}}


def evaluate(engine, loader, pipe: DevicePipe, ctx: DataContext, cfg: Config, dist: DistInfo, split: str) -> dict:
    """The split's metrics, keys prefixed by the split: classification, or retrieval (model.task=retrieval)."""
    if cfg.model.task == "retrieval":
        from engine.training.retrieval import evaluate_retrieval

        return evaluate_retrieval(engine, loader, pipe, ctx, cfg, dist, split)
    _, labels, probs = predict(engine, loader, pipe, dist, len(ctx.classes))
    return split_metrics(labels, probs, ctx.classes, cfg, split)


def finish(engine, cfg: Config, ctx: DataContext, pipe: DevicePipe, dist: DistInfo, run: RunDir, state: TrainState,
           monitor: Monitor) -> dict:
    """After the last epoch: test split on the best weights (eval.test), curves.png, summary.json."""
    test = None
    if cfg.eval.test:
        load_weights(engine, run.checkpoints, "best")
        test = evaluate(engine, create_loader(cfg, ctx, "test", False, dist.rank, dist.world), pipe, ctx, cfg, dist, "test")
        run.write_json("test_metrics.json", {"checkpoint": "best", **test})
        monitor.scalars(test, state.global_step)  # test/top1 ... beside val/ in TensorBoard and W&B
        if dist.is_main and "test_confusion_matrix" in test:
            write_confusion(run.path / "test_confusion", test["test_confusion_matrix"], ctx.classes)
    monitor.close()
    if dist.is_main:
        plot_curves(run.read_metrics(), run.path / "curves.png", cfg.eval.metric)
    summary = {**_summary(run, state, test), **run_statistics(engine.module, dist.device, run.read_metrics(), cfg, ctx,
                                                              ("val", "test") if test is not None else ("val",))}
    run.write_json("summary.json", summary)
    if dist.is_main:
        print(final_summary(summary, cfg.eval.metric, run.path), flush=True)
    return summary


def _build_engine(model, cfg: Config, dist: DistInfo, precision: str, steps_per_epoch: int, stage_name: str):
    """The engine of one stage: its frozen parts, its own schedule over its epochs, its loss settings."""
    stage = stage_named(cfg, stage_name)
    local = stage_config(cfg, stage)
    if hasattr(model, "cfg"):
        model.cfg = local.model  # the stage's model settings (modality masking, dropout) for the forward pass
    engine, _, _ = wrap_model(model, local, dist.device, precision, dist.world, steps_per_epoch * stage.epochs,
                              stage_lr(cfg, stage), frozen=stage.freeze)
    return engine


def _refuse_non_finite_weights(module: torch.nn.Module, state: TrainState) -> None:
    """Raise NonFiniteLoss rather than overwrite the last good checkpoint with non-finite weights."""
    if torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all():  # one device sync per save
        return
    raise NonFiniteLoss(f"non-finite weights after step {state.global_step} (the loss was finite: non-finite gradients); "
                        "not saved, last good checkpoint kept")


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _track_best(cfg: Config, state: TrainState, metrics: dict) -> bool:
    value = metrics[cfg.eval.metric] if cfg.eval.metric in metrics else None
    if value is None:
        raise KeyError(f"eval.metric={cfg.eval.metric!r} is not an evaluation metric; choose one of {sorted(_scalars(metrics))}")
    if math.isnan(value):  # NaN compares False with everything: it must not freeze 'best' at an earlier epoch
        log.warning("eval.metric=%s is NaN at epoch %d (undefined on this split); the epoch does not count as an "
                    "improvement. Consider eval.metric=val_loss", cfg.eval.metric, state.epoch)
        state.bad_epochs += 1
        return False
    if cfg.eval.better(value, state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = value, state.epoch, 0
        return True
    state.bad_epochs += 1
    return False


def _summary(run: RunDir, state: TrainState, test: Optional[dict] = None) -> dict:
    records = run.read_metrics() if run.is_main else []
    keys = ("val_loss", "val_top1", "val_top3", "val_auc_macro", "val_f1_macro", "train_loss",
            *(f"val_{k}" for k in RETRIEVAL_METRICS))
    pick = lambda r: {k: r[k] for k in keys if k in r}  # noqa: E731
    best = next((r for r in records if r["epoch"] == state.best_epoch), records[-1] if records else {})
    out = {"epochs": state.epoch, "final": pick(records[-1]) if records else {},
           "best": {"epoch": state.best_epoch, **pick(best)}, "state": asdict(state)}
    if test is not None:
        out["test"] = _scalars(test)
    return out


def _steps_per_epoch(cfg: Config, loader) -> int:
    batches = len(loader)
    if cfg.train.max_steps_per_epoch:
        batches = min(batches, cfg.train.max_steps_per_epoch * cfg.train.grad_accum)
    if batches < cfg.train.grad_accum:
        raise ConfigError(f"train.grad_accum={cfg.train.grad_accum}: an epoch has {batches} batches per rank, fewer "
                          "than one update; lower train.grad_accum")
    return batches // cfg.train.grad_accum

