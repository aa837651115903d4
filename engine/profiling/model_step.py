"""The profiler's only contact with the training engine: one function, kept small on purpose.

``model_step_fn`` builds the configured model with a plain ``torch.optim.AdamW``
(no DeepSpeed: the profile measures the model and the data path, not the
engine wrapper, and stays independent of ``engine/training`` internals while
they evolve) and returns the callables a training step is made of.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

OPTIMIZER_NOTE = "optimizer: torch AdamW, no DeepSpeed"


@dataclass
class ModelStep:
    step: Callable[[dict, torch.Tensor], None]  # forward + backward + optimizer step on device inputs
    pipe: Callable  # DevicePipe: host Batch -> (device inputs, targets, batch), incl. uint8 augmentation
    num_classes: int


def compiled(cfg, device: torch.device) -> bool:
    """Whether training compiles the model here (train.compile, where the card supports it)."""
    from engine.hardware import compile_supported, device_info

    return bool(cfg.train.compile) and compile_supported(device_info(device))


def model_step_fn(cfg, ctx, device: torch.device, precision: str, channels_last: bool) -> ModelStep:
    """Model + AdamW + loss as a step callable, and the DevicePipe the training loop uses."""
    from engine.hardware import device_info, fused_adam_available, torch_dtype
    from engine.models import create_model
    from engine.training.losses import classification_loss
    from engine.training.step import DevicePipe

    num_classes = len(ctx.classes)
    model = create_model(cfg.model, num_classes, len(cfg.data.numeric_columns), ctx.tabular.cardinalities).to(device)
    if channels_last and getattr(model, "image", None) is not None:
        model.image.to(memory_format=torch.channels_last)
    model.train()
    if compiled(cfg, device):  # as wrap_model does for training, so the ceiling is the model that will train
        model.compile()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                  fused=fused_adam_available(device_info(device)) or None)
    dtype = torch_dtype(precision)
    # Mixed precision by autocast (DeepSpeed would cast the weights instead; the matmuls run in the same dtype).
    amp = (lambda: torch.autocast(device.type, dtype=dtype)) if precision != "fp32" else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(inputs: dict, targets: torch.Tensor) -> None:
        with amp():
            out = model(**inputs)
        loss = classification_loss(out.logits, targets, cfg)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return ModelStep(step, DevicePipe(cfg, device, dtype, channels_last), num_classes)
