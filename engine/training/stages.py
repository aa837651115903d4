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
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def stage_of(cfg: Config, epoch: int) -> Stage:
    """Stage of the (0-based) ``epoch``."""
    return "frozen" if epoch < cfg.train.frozen_epochs else "finetune"


def stage_lr(cfg: Config, stage: Stage) -> float:
    lr = cfg.train.head_lr if stage == "frozen" else cfg.train.finetune_lr
    return lr if lr is not None else cfg.optim.lr


def stage_epochs(cfg: Config, stage: Stage) -> int:
    return cfg.train.frozen_epochs if stage == "frozen" else cfg.train.epochs - cfg.train.frozen_epochs


def _encoders(model: nn.Module) -> list[nn.Module]:
    return [m for m in (getattr(model, "image", None), getattr(model, "text", None)) if m is not None]


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze the image backbone and text encoder (the model's own ``set_frozen`` when it has one)."""
    if callable(getattr(model, "set_frozen", None)):
        model.set_frozen(frozen)
    else:
        for encoder in _encoders(model):
            encoder.requires_grad_(not frozen)
    model._engine_frozen = frozen
    apply_train_mode(model)


def apply_train_mode(model: nn.Module) -> None:
    """Put the norm layers of frozen encoders back in eval after ``.train()``: their statistics stay fixed.

    Needed because DeepSpeed's ``engine.train()`` calls ``module.train()``, which
    a model without its own freezing logic would let switch every norm to training.
    """
    if getattr(model, "_engine_frozen", False):
        for encoder in _encoders(model):
            for m in encoder.modules():
                if isinstance(m, _NORMS):
                    m.eval()
