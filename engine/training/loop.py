"""The training loop: ``train()`` reads top to bottom; each piece it calls is short and testable."""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine import hardware
from engine.config import Config
from engine.data.dataset import DataContext
from engine.data.loaders import create_loader
from engine.models import create_model
from engine.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from engine.training.distributed import DistInfo, all_gather_cat, init_distributed
from engine.training.metrics import classification_metrics
from engine.training.run_dir import RunDir, provenance
from engine.training.step import DevicePipe, classification_loss
from engine.training.wrap import wrap_model


class NonFiniteLoss(RuntimeError):
    pass


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    import random

    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def train(cfg: Config, resume: bool = False) -> dict:
    """Train, evaluate each epoch, checkpoint; return the summary written to summary.json."""
    dist = init_distributed()
    seed_everything(cfg.run.seed, dist.rank, cfg.run.deterministic)
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length)
    run = RunDir(cfg, dist.is_main)
    precision = hardware.choose_precision(hardware.device_info(dist.device), cfg.train.precision)
    run.write_config(cfg, provenance(cfg, ctx.manifest.version, ctx.classes, dist.world, {"precision": precision}))
    train_loader = create_loader(cfg, ctx, "train", True, dist.rank, dist.world)
    val_loader = create_loader(cfg, ctx, "val", False, dist.rank, dist.world)
    steps_per_epoch = _steps_per_epoch(cfg, train_loader)
    model = create_model(cfg.model, len(ctx.classes), len(cfg.data.numeric_columns), ctx.tabular.cardinalities)
    engine, _, _ = wrap_model(model, cfg, dist.device, precision, dist.world, steps_per_epoch * cfg.train.epochs, cfg.optim.lr)
    pipe = DevicePipe(cfg, dist.device, hardware.torch_dtype(precision), _channels_last(cfg, dist))
    state = TrainState()
    if resume:
        state, loader_state = load_checkpoint(engine, run.checkpoints, "last", dist.rank)
        train_loader.load_state_dict(loader_state)
    for epoch in range(state.epoch, cfg.train.epochs):
        train_loader.set_epoch(epoch)
        train_stats = train_epoch(engine, train_loader, pipe, cfg, state, dist, epoch, steps_per_epoch, len(ctx.classes))
        val = evaluate(engine, val_loader, pipe, ctx.classes, cfg, dist, "val")
        state.epoch = epoch + 1
        improved = _track_best(cfg, state, val)
        run.log_metrics({"epoch": epoch + 1, "step": state.global_step, **train_stats, **_scalars(val)}, fresh=epoch == 0 and not resume)
        save_checkpoint(engine, run.checkpoints, "last", state, train_loader.state_dict(), cfg.to_dict(), dist.rank)
        if improved:
            save_checkpoint(engine, run.checkpoints, "best", state, train_loader.state_dict(), cfg.to_dict(), dist.rank)
        if cfg.train.early_stopping_patience and state.bad_epochs >= cfg.train.early_stopping_patience:
            break
    summary = _summary(run, state)
    run.write_json("summary.json", summary)
    return summary


def train_epoch(engine, loader, pipe: DevicePipe, cfg: Config, state: TrainState, dist: DistInfo, epoch: int,
                steps_per_epoch: int, num_classes: int) -> dict:
    engine.train()
    losses, seen, wait, t0 = [], 0, 0.0, time.perf_counter()
    bar = tqdm(total=steps_per_epoch * cfg.train.grad_accum, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
               disable=not dist.is_main, unit="batch", dynamic_ncols=True)
    t_wait = time.perf_counter()
    for i, batch in enumerate(loader):
        wait += time.perf_counter() - t_wait  # time the step waited for data
        inputs, targets, batch = pipe(batch, True, epoch, num_classes, step_seed=state.global_step)
        out = engine(**inputs)
        loss = classification_loss(out.logits, targets, cfg)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {state.global_step}, "
                                f"batch {i} (manifest rows {batch.index[:8].tolist()}...); last good checkpoint kept")
        engine.backward(loss)
        engine.step()
        if engine.is_gradient_accumulation_boundary():
            state.global_step += 1
        losses.append(loss.item())
        seen += batch.size
        bar.update(1)
        if i % cfg.train.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{engine.get_lr()[0]:.2e}",
                            img_s=f"{seen * dist.world / (time.perf_counter() - t0):.0f}")
        if cfg.train.max_steps_per_epoch and i + 1 >= cfg.train.max_steps_per_epoch * cfg.train.grad_accum:
            break
        t_wait = time.perf_counter()
    bar.close()
    elapsed = time.perf_counter() - t0
    return {"train_loss": float(np.mean(losses)) if losses else math.nan, "lr": float(engine.get_lr()[0]),
            "images_per_s": seen * dist.world / elapsed, "data_wait_frac": wait / elapsed}


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


def evaluate(engine, loader, pipe: DevicePipe, classes: list[str], cfg: Config, dist: DistInfo, split: str) -> dict:
    idx, labels, probs = predict(engine, loader, pipe, dist, len(classes))
    loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels)).item())
    metrics = classification_metrics(probs, labels, classes, cfg.eval.topk)
    return {f"{split}_loss": loss, **{f"{split}_{k}": v for k, v in metrics.items()}}


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _track_best(cfg: Config, state: TrainState, metrics: dict) -> bool:
    value = metrics[cfg.eval.metric] if cfg.eval.metric in metrics else None
    if value is None:
        raise KeyError(f"eval.metric={cfg.eval.metric!r} is not an evaluation metric; choose one of {sorted(_scalars(metrics))}")
    if cfg.eval.better(value, state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = value, state.epoch, 0
        return True
    state.bad_epochs += 1
    return False


def _summary(run: RunDir, state: TrainState) -> dict:
    records = run.read_metrics() if run.is_main else []
    keys = ("val_loss", "val_top1", "val_top3", "val_auc_macro", "val_f1_macro")
    pick = lambda r: {k: r[k] for k in keys if k in r}  # noqa: E731
    best = next((r for r in records if r["epoch"] == state.best_epoch), records[-1] if records else {})
    return {"epochs": state.epoch, "final": pick(records[-1]) if records else {}, "best": {"epoch": state.best_epoch, **pick(best)},
            "state": asdict(state)}


def _steps_per_epoch(cfg: Config, loader) -> int:
    batches = len(loader)
    if cfg.train.max_steps_per_epoch:
        batches = min(batches, cfg.train.max_steps_per_epoch * cfg.train.grad_accum)
    if batches < cfg.train.grad_accum:
        raise ValueError(f"an epoch has {batches} batches per rank, fewer than train.grad_accum={cfg.train.grad_accum}")
    return batches // cfg.train.grad_accum


def _channels_last(cfg: Config, dist: DistInfo) -> bool:
    if cfg.train.channels_last is not None:
        return cfg.train.channels_last
    return hardware.channels_last_preferred(hardware.device_info(dist.device))
