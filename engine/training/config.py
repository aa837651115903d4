"""Config sections of the training engine: optimizer, schedule, stages, evaluation, DeepSpeed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "rmsprop"] = "adamw"
    lr: float = 1e-3  # peak learning rate of the finetune stage
    weight_decay: float = 0.05  # not applied to norms and biases
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd / rmsprop
    backbone_lr_scale: float = 1.0  # backbone lr = lr * scale
    text_lr_scale: float = 1.0  # text encoder lr = lr * scale
    layer_decay: Optional[float] = None  # layer-wise LR decay factor (e.g. 0.75); null = off
    # cosine / linear: linear warmup (warmup_steps), then cosine or linear decay to min_lr_ratio * lr;
    # onecycle: torch's OneCycleLR shape (cosine up from lr / div_factor over pct_start of the updates, then cosine
    # down to lr / (div_factor * final_div_factor)); constant: warmup, then lr
    schedule: Literal["cosine", "linear", "onecycle", "constant"] = "cosine"
    warmup_steps: int = 0  # optimizer updates of linear warmup (cosine / linear / constant)
    min_lr_ratio: float = 0.0  # cosine / linear floor as a fraction of lr
    pct_start: float = 0.3  # onecycle: share of the updates spent rising to lr
    div_factor: float = 25.0  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be in [0, 1), got {list(self.betas)}")
        for key in ("momentum", "backbone_lr_scale", "text_lr_scale"):
            if getattr(self, key) < 0:
                raise ValueError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay must be in (0, 1] or null, got {self.layer_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"optim.pct_start must be in (0, 1), got {self.pct_start}")
        for key in ("div_factor", "final_div_factor"):
            if getattr(self, key) < 1:
                raise ValueError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if self.schedule == "onecycle" and self.warmup_steps:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} with optim.schedule=onecycle: onecycle warms up "
                             "over optim.pct_start of the updates; set warmup_steps to 0 (or use schedule: linear)")


@dataclass
class StageConfig:
    """One stage of ``train.stages``: its epochs, frozen parts, peak lr and loss settings."""

    name: str = ""  # shown in logs and metrics.jsonl, recorded in checkpoints; unique within train.stages
    epochs: int = 1
    freeze: list[str] = field(default_factory=list)  # parts kept fixed: backbone, text, tabular, fusion, head
    lr: Optional[float] = None  # peak lr of the stage's schedule (default optim.lr)
    # loss settings for this stage only, as dotted keys: {"model.hard_negatives": "weighted", "train.label_smoothing": 0.1}
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from engine.training.stages import PARTS

        if not self.name:
            raise ValueError("train.stages: every stage needs a name")
        if self.epochs <= 0:
            raise ValueError(f"train.stages[{self.name}].epochs must be positive, got {self.epochs}")
        for part in self.freeze:
            if part not in PARTS:
                raise ValueError(f"train.stages[{self.name}].freeze: unknown part {part!r} (parts: {list(PARTS)})")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"train.stages[{self.name}].lr must be positive, got {self.lr}")


@dataclass
class TrainConfig:
    epochs: int = 1  # total epochs (frozen + finetune)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 sm_80+, fp16 sm_7x, fp32 Pascal/CPU
    grad_accum: int = 1  # micro batches per optimizer update
    grad_clip: float = 1.0  # global norm; 0 = off
    frozen_epochs: int = 0  # first epochs with backbone and text encoder frozen (ignored when train.stages is set)
    head_lr: Optional[float] = None  # lr during frozen epochs (default optim.lr)
    finetune_lr: Optional[float] = None  # lr after the frozen epochs (default optim.lr)
    # stages in order (each: name, epochs, freeze, lr, overrides); empty = frozen_epochs at head_lr, then finetune_lr
    stages: list[StageConfig] = field(default_factory=list)
    loss: Literal["ce", "focal"] = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: Literal["none", "inverse", "sqrt"] = "none"
    channels_last: Optional[bool] = None  # null = per card (engine.hardware)
    compile: bool = False  # torch.compile the model where the card supports it
    early_stopping_patience: int = 0  # epochs without improvement before stopping; 0 = off
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests and profiling
    checkpoint_every_steps: int = 0  # also save 'last' every N optimizer updates mid-epoch (0 = epoch ends only)
    # what each tag holds: full = DeepSpeed's files (weights, optimizer, schedule, RNG: resumable), weights = the
    # model's weights only, model.safetensors (evaluate, predict, export; about 1/3 of full under Adam)
    checkpoint_last: Literal["full", "weights"] = "full"  # weights: --resume is refused (nothing to resume from)
    checkpoint_best: Literal["weights", "full"] = "weights"
    log_every: int = 10  # steps between tqdm postfix / tensorboard points
    tensorboard: bool = True
    # distillation (engine/training/distill.py): a finished run whose eval/train_best_probs.npz are the soft targets
    distill_from: Optional[str] = None
    distill_temperature: float = 2.0  # softens teacher and student alike; the term is scaled by T^2
    distill_alpha: float = 0.5  # loss = (1 - alpha) * classification + alpha * distillation
    wandb: bool = False  # also log to Weights & Biases (pip install '.[wandb]'; a warning and no W&B without it)
    wandb_project: str = "fusion"
    wandb_entity: Optional[str] = None  # team or user; null = the logged-in default
    wandb_group: Optional[str] = None  # groups runs in the UI (a sweep's variants, an OOF's folds)
    wandb_tags: list[str] = field(default_factory=list)
    wandb_mode: Literal["online", "offline", "disabled"] = "online"  # offline: kept under RUN_DIR/wandb for `wandb sync`

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"train.epochs must be positive, got {self.epochs}")
        if self.grad_accum <= 0:
            raise ValueError(f"train.grad_accum must be positive, got {self.grad_accum}")
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"train.checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")
        if self.checkpoint_every_steps and self.checkpoint_last == "weights":
            raise ValueError(f"train.checkpoint_every_steps={self.checkpoint_every_steps} saves 'last' mid-epoch to resume "
                             "from, but train.checkpoint_last=weights cannot resume; set checkpoint_last: full or "
                             "checkpoint_every_steps: 0")
        if not 0 <= self.frozen_epochs <= self.epochs:
            raise ValueError(f"train.frozen_epochs must be within [0, train.epochs], got {self.frozen_epochs}")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        for key in ("head_lr", "finetune_lr"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be positive or null, got {getattr(self, key)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.focal_gamma < 0:
            raise ValueError(f"train.focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"train.early_stopping_patience must be >= 0 (0 = off), got {self.early_stopping_patience}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch <= 0:
            raise ValueError(f"train.max_steps_per_epoch must be positive or null, got {self.max_steps_per_epoch}")
        if self.log_every <= 0:
            raise ValueError(f"train.log_every must be positive (steps between log points), got {self.log_every}")
        if self.distill_temperature <= 0 or not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"train.distill_temperature must be > 0 and train.distill_alpha in [0, 1], got "
                             f"{self.distill_temperature} and {self.distill_alpha}")
        if not self.wandb_project.strip():
            raise ValueError("train.wandb_project must not be empty")
        if self.stages:
            names = [s.name for s in self.stages]
            if len(set(names)) != len(names):
                raise ValueError(f"train.stages: stage names must be unique, got {names}")
            total = sum(s.epochs for s in self.stages)
            if total != self.epochs:
                raise ValueError(f"train.stages add up to {total} epochs but train.epochs={self.epochs}; make them agree")
            if self.frozen_epochs or self.head_lr is not None or self.finetune_lr is not None:
                raise ValueError("train.stages replaces train.frozen_epochs / head_lr / finetune_lr: set one or the other")


@dataclass
class EvalConfig:
    metric: str = "val_loss"  # checkpoint 'best' by this key of the epoch metrics
    mode: Literal["min", "max", "auto"] = "auto"  # auto: min for *loss, max otherwise
    test: bool = False  # also evaluate the test split at the end
    topk: int = 3
    # retrieval runs: also classify each image zero-shot against one prompt per class, e.g. "a photo of {}"
    # (metrics {split}_zeroshot_top1, _f1_macro, ...); null = off
    zero_shot_prompt: Optional[str] = None

    def __post_init__(self):
        if self.topk < 1:
            raise ValueError(f"eval.topk must be >= 1, got {self.topk}")
        if self.zero_shot_prompt is not None and "{}" not in self.zero_shot_prompt:
            raise ValueError(f"eval.zero_shot_prompt={self.zero_shot_prompt!r} needs a '{{}}' where the class name goes")

    def better(self, new: float, old: Optional[float]) -> bool:
        if old is None:
            return True
        mode = self.mode if self.mode != "auto" else ("min" if self.metric.endswith("loss") else "max")
        return new < old if mode == "min" else new > old


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0  # ZeRO stage 0, 1 or 2
    extra: dict[str, Any] = field(default_factory=dict)  # passed through into the DeepSpeed JSON config

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1 or 2, got {self.zero_stage}")
