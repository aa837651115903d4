"""Optimizer and learning-rate schedule, built from the model's parameter groups."""
from __future__ import annotations

import math

import torch
from torch import nn

from engine.training.config import OptimConfig

NO_DECAY_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.Embedding)


def _no_decay_names(model: nn.Module) -> set[int]:
    """ids of parameters excluded from weight decay: biases, norms, embeddings."""
    out = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, NO_DECAY_TYPES) or p.ndim <= 1:
                out.add(id(p))
    return out


def param_groups(model: nn.Module, cfg: OptimConfig, base_lr: float) -> list[dict]:
    """Split trainable parameters by (lr scale, weight decay); each group keeps its ``lr_scale``."""
    no_decay = _no_decay_names(model)
    scales = {"image": cfg.backbone_lr_scale, "text": cfg.text_lr_scale}
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = scales.get(name.split(".")[0], 1.0)
        wd = 0.0 if id(p) in no_decay else cfg.weight_decay
        key = (scale, wd)
        if key not in groups:
            groups[key] = {"params": [], "lr": base_lr * scale, "lr_scale": scale, "weight_decay": wd}
        groups[key]["params"].append(p)
    return list(groups.values())


def create_optimizer(model: nn.Module, cfg: OptimConfig, base_lr: float, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, base_lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=base_lr, betas=cfg.betas, fused=device.type == "cuda" or None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.RMSprop(groups, lr=base_lr, momentum=cfg.momentum, alpha=0.9, eps=1e-3)


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the peak lr at optimizer update ``step``: warmup, then cosine / onecycle / constant."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if cfg.schedule == "onecycle":  # linear anneal to the floor after the warmup peak
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - progress)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
