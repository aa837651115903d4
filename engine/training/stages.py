"""Staged finetuning: frozen encoders at ``train.head_lr``, then everything at ``train.finetune_lr``.

DeepSpeed fixes the trainable set when it wraps the model, so a stage switch
re-wraps the same module (fresh optimizer and schedule for the stage); the
checkpoint records the stage so a resume rebuilds the right engine first.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from engine.config import Config

Stage = Literal["frozen", "finetune"]


def stage_of(cfg: Config, epoch: int) -> Stage:
    """Stage of the (0-based) ``epoch``."""
    return "frozen" if epoch < cfg.train.frozen_epochs else "finetune"


def stage_lr(cfg: Config, stage: Stage) -> float:
    lr = cfg.train.head_lr if stage == "frozen" else cfg.train.finetune_lr
    return lr if lr is not None else cfg.optim.lr


def stage_epochs(cfg: Config, stage: Stage) -> int:
    return cfg.train.frozen_epochs if stage == "frozen" else cfg.train.epochs - cfg.train.frozen_epochs


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze the image backbone and text encoder through the model's own ``set_frozen``.

    FusionModel's ``train()`` keeps the norm layers of frozen encoders in eval, so
    their statistics stay fixed across DeepSpeed's ``engine.train()`` too.
    """
    if hasattr(model, "set_frozen"):
        model.set_frozen(frozen)
    elif frozen:
        raise TypeError(f"{type(model).__name__} has no set_frozen(): it cannot train with frozen encoders")
