"""Staged training: a run is a sequence of stages, each with its epochs, frozen parts, learning rate and loss settings.

``train.stages`` lists them (e.g. a frozen warm-up, a finetune, and a last stage
with hard negatives); without it, ``train.frozen_epochs`` / ``head_lr`` /
``finetune_lr`` describe the classic two: "frozen" (backbone and text encoder
fixed) then "finetune" (everything).

DeepSpeed fixes the trainable set when it wraps the model, so a stage switch
re-wraps the same module (fresh optimizer and schedule for the stage); the
checkpoint records the stage's name so a resume rebuilds that stage's engine first.
A stage's ``overrides`` (loss settings only, see ``engine.config.STAGE_OVERRIDABLE``)
are applied to a copy of the run config that the stage's steps read.
"""
from __future__ import annotations

from typing import Collection

from torch import nn

from engine.config import Config, apply_stage_overrides
from engine.training.config import StageConfig

# Parameter-group names (FusionModel / DualEncoderModel.param_groups) a stage can freeze.
PARTS = ("backbone", "text", "tabular", "fusion", "head")
ENCODERS = frozenset({"backbone", "text"})


def stages(cfg: Config) -> list[StageConfig]:
    """The run's stages in order; ``train.stages`` or the two classic ones from ``train.frozen_epochs``."""
    if cfg.train.stages:
        return list(cfg.train.stages)
    out = []
    if cfg.train.frozen_epochs:
        out.append(StageConfig("frozen", cfg.train.frozen_epochs, sorted(ENCODERS), cfg.train.head_lr))
    if cfg.train.epochs > cfg.train.frozen_epochs:
        out.append(StageConfig("finetune", cfg.train.epochs - cfg.train.frozen_epochs, [], cfg.train.finetune_lr))
    return out


def stage_of(cfg: Config, epoch: int) -> StageConfig:
    """Stage of the (0-based) ``epoch``; past the last epoch, the last stage."""
    seen = 0
    all_stages = stages(cfg)
    for stage in all_stages:
        seen += stage.epochs
        if epoch < seen:
            return stage
    return all_stages[-1]


def stage_named(cfg: Config, name: str) -> StageConfig:
    """The stage a checkpoint names; a resume with a recipe whose stages changed fails naming both."""
    for stage in stages(cfg):
        if stage.name == name:
            return stage
    raise ValueError(f"the checkpoint was saved in stage {name!r}, which train.stages no longer has "
                     f"(stages now: {[s.name for s in stages(cfg)]}); resume with the run's own config")


def stage_lr(cfg: Config, stage: StageConfig) -> float:
    return stage.lr if stage.lr is not None else cfg.optim.lr


def stage_config(cfg: Config, stage: StageConfig) -> Config:
    """The run config as the stage's steps see it (its loss overrides applied); ``cfg`` itself is unchanged."""
    return apply_stage_overrides(cfg, stage.overrides, f"train.stages[{stage.name}].overrides") if stage.overrides else cfg


def set_frozen(model: nn.Module, frozen: bool | Collection[str]) -> None:
    """Fix the parameters of the named parts (``True``: backbone and text encoder, ``False``: none).

    Parts are the model's parameter-group names (``model.param_groups()``); a model without groups can only
    be trained whole. Norm layers inside frozen parts keep their statistics: see ``keep_frozen_norms``.
    """
    parts = frozenset(ENCODERS if frozen is True else () if frozen is False else frozen)
    unknown = parts - set(PARTS)
    if unknown:
        raise ValueError(f"cannot freeze {sorted(unknown)}: the parts of a model are {list(PARTS)}")
    if not callable(getattr(model, "param_groups", None)):
        if parts:
            raise TypeError(f"{type(model).__name__} has no param_groups(): it cannot train with frozen parts")
        return
    for group in model.param_groups():
        for p in group["params"]:
            p.requires_grad_(group["name"] not in parts)
    model.frozen_parts = parts
    if hasattr(model, "frozen"):  # FusionModel/DualEncoderModel.train() keep frozen encoders' norms in eval
        model.frozen = ENCODERS <= parts
    keep_frozen_norms(model)


def keep_frozen_norms(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (their running statistics stay fixed).

    Called after every ``train()`` of the model (DeepSpeed's ``engine.train()`` resets the modes).
    """
    parts = getattr(model, "frozen_parts", frozenset())
    if not parts or not model.training:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
