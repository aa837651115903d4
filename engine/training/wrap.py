"""The one place a plain ``nn.Module`` becomes a DeepSpeed engine, in a documented order.

1. precision is chosen for the card (engine.hardware), 2. the model moves to
the device (channels_last for conv backbones on tensor-core cards),
3. optimizer and schedule are built from its trainable parameters,
4. DeepSpeed wraps all three with a config generated from ours plus the
user's pass-through keys.
"""
from __future__ import annotations

import torch
from torch import nn

from engine import hardware
from engine.config import Config
from engine.training.optim import create_optimizer, create_scheduler


def deepspeed_config(cfg: Config, precision: str, world: int) -> dict:
    """Our settings as a DeepSpeed JSON config; ``deepspeed.extra`` keys are merged on top."""
    micro, accum = cfg.loader.batch_size, cfg.train.grad_accum
    ds = {
        "train_batch_size": micro * accum * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    for key, value in cfg.deepspeed.extra.items():
        if isinstance(value, dict) and isinstance(ds.get(key), dict):
            ds[key] = {**ds[key], **value}
        else:
            ds[key] = value
    if ds["train_batch_size"] != ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world:
        raise ValueError(
            f"deepspeed.extra: train_batch_size={ds['train_batch_size']} != micro batch {ds['train_micro_batch_size_per_gpu']}"
            f" x accumulation {ds['gradient_accumulation_steps']} x world size {world}"
        )
    return ds


def wrap_model(model: nn.Module, cfg: Config, device: torch.device, precision: str, world: int, total_steps: int, base_lr: float):
    """Return (engine, optimizer, scheduler) ready to train; see the module docstring for the order."""
    import deepspeed

    info = hardware.device_info(device)
    channels_last = cfg.train.channels_last if cfg.train.channels_last is not None else hardware.channels_last_preferred(info)
    model = model.to(device)
    if channels_last and getattr(model, "image", None) is not None:
        model.image.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, cfg.optim, base_lr, device)
    scheduler = create_scheduler(optimizer, cfg.optim, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, precision, world)
    )
    return engine, optimizer, scheduler
