"""Optimizer and learning-rate schedule, built from the model's parameter groups."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from engine import hardware
from engine.training.config import OptimConfig

NO_DECAY_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.Embedding)
_MODULE_SCALE = {"image": "backbone", "backbone": "backbone", "text": "text"}


def _no_decay_ids(model: nn.Module) -> set[int]:
    """ids of parameters excluded from weight decay: biases, norms, embeddings."""
    out = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, NO_DECAY_TYPES) or p.ndim <= 1:
                out.add(id(p))
    return out


def _model_groups(model: nn.Module) -> list[dict]:
    """The model's own groups (``model.param_groups()``: name, params, lr_scale, layer_id, num_layers,
    no_weight_decay), or one group per top-level submodule for a model without them."""
    if callable(getattr(model, "param_groups", None)):
        return model.param_groups()
    no_decay = _no_decay_ids(model)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        key = (top, id(p) in no_decay)
        groups.setdefault(key, {"name": top, "params": [], "lr_scale": 1.0, "layer_id": None, "num_layers": 1,
                                "no_weight_decay": key[1]})["params"].append(p)
    return list(groups.values())


def param_groups(model: nn.Module, cfg: OptimConfig, base_lr: float) -> list[dict]:
    """Trainable parameters grouped by (lr, weight decay); each optimizer group keeps its ``lr_scale``.

    lr = base_lr x module scale (optim.backbone_lr_scale / text_lr_scale, times the
    model's own lr_scale) x layer_decay ** (num_layers - 1 - layer_id) when
    optim.layer_decay is set and the model gives layer ids.
    """
    scales = {"backbone": cfg.backbone_lr_scale, "text": cfg.text_lr_scale}
    out: dict[tuple, dict] = {}
    for g in _model_groups(model):
        params = [p for p in g["params"] if p.requires_grad]
        if not params:
            continue
        scale = g.get("lr_scale", 1.0) * scales.get(_MODULE_SCALE.get(g["name"], ""), 1.0)
        if cfg.layer_decay is not None and g.get("layer_id") is not None:
            scale *= cfg.layer_decay ** (g["num_layers"] - 1 - g["layer_id"])
        wd = 0.0 if g.get("no_weight_decay") else cfg.weight_decay
        key = (round(scale, 12), wd)
        if key not in out:
            out[key] = {"params": [], "lr": base_lr * scale, "lr_scale": scale, "weight_decay": wd}
        out[key]["params"].extend(params)
    return list(out.values())


def create_optimizer(model: nn.Module, cfg: OptimConfig, base_lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (torch's fused kernel on CUDA, the plain loop on CPU), SGD with Nesterov, or RMSprop."""
    groups = param_groups(model, cfg, base_lr)
    if not groups:
        raise ValueError("no trainable parameters (is every branch frozen?)")
    fused = True if hardware.fused_adam_available(hardware.device_info(device)) else None
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=base_lr, betas=cfg.betas, fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, nesterov=True, fused=fused)
    return torch.optim.RMSprop(groups, lr=base_lr, momentum=cfg.momentum, alpha=0.9, eps=1e-3)


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the peak lr at optimizer update ``step`` (0-based) of ``total_steps``."""
    if cfg.schedule == "onecycle":
        return _onecycle(cfg, total_steps)
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if cfg.schedule == "linear":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - progress)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _onecycle(cfg: OptimConfig, total_steps: int):
    """torch.optim.lr_scheduler.OneCycleLR's two-phase cosine shape (three_phase=False) as a multiplier of lr."""
    start, end = 1 / cfg.div_factor, 1 / (cfg.div_factor * cfg.final_div_factor)
    peak_at = float(cfg.pct_start * total_steps) - 1  # OneCycleLR's phase boundary, in updates
    last = total_steps - 1

    def cos_anneal(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    def f(step: int) -> float:
        step = min(step, last)
        if step <= peak_at:
            return cos_anneal(start, 1.0, step / peak_at) if peak_at > 0 else 1.0
        return cos_anneal(1.0, end, (step - peak_at) / max(last - peak_at, 1e-12))

    return f


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """Stepped once per optimizer update (DeepSpeed calls it at each accumulation boundary)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))


def loss_class_weights(labels, num_classes: int, mode: str) -> Optional[torch.Tensor]:
    """Per-class loss weights from the train label counts (mean 1), or None for mode 'none'."""
    if mode == "none":
        return None
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double().clamp_min(1)
    w = 1.0 / counts if mode == "inverse" else counts.rsqrt()
    return (w * num_classes / w.sum()).float()
