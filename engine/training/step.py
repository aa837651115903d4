"""One training step: a host batch through the device pipe (copy, augmentation, casting), forward, loss, finite
check, backward and optimizer step. ``train_step`` is the micro-step the loop calls; tests call it alone."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from engine import hardware
from engine.config import Config
from engine.data.batch import Batch
from engine.errors import UserError
from engine.training.distill import Teacher
from engine.training.losses import training_loss


class DevicePipe:
    """Turns a host Batch into model inputs on the device, in one place.

    uint8 NHWC batches (cache backend) are augmented here, right after the
    host-to-device copy, by ``kernels`` (fused Triton on sm_80+, PyTorch
    reference elsewhere). Images are cast to the training dtype and layout here
    and nowhere else; labels stay integer (or fp32 soft labels under mixup).
    """

    def __init__(self, cfg: Config, device: torch.device, dtype: torch.dtype, channels_last: bool):
        self.cfg, self.device, self.dtype, self.channels_last = cfg, device, dtype, channels_last
        self._augmenter = None

    @classmethod
    def for_device(cls, cfg: Config, device: torch.device, precision: str) -> "DevicePipe":
        """The pipe of a run: dtype of ``precision``, layout from train.channels_last and the card."""
        channels_last = hardware.use_channels_last(hardware.device_info(device), cfg.train.channels_last)
        return cls(cfg, device, hardware.torch_dtype(precision), channels_last)

    @property
    def augmenter(self):
        if self._augmenter is None:
            from kernels import Augmenter

            self._augmenter = Augmenter(self.cfg.augment, out_size=self.cfg.data.image_size, seed=self.cfg.run.seed,
                                        dtype=self.dtype, channels_last=self.channels_last, device=self.device)
        return self._augmenter

    def __call__(self, batch: Batch, train: bool, epoch: int, num_classes: int, step_seed: int | tuple[int, ...] = 0):
        batch = batch.to(self.device)
        images, targets = batch.images, batch.labels
        if batch.needs_augment:
            images = self.augmenter.train(images, batch.aug_key, epoch) if train else self.augmenter.eval(images)
        if train and (self.cfg.augment.mixup_alpha or self.cfg.augment.cutmix_alpha):  # every backend's batches
            from kernels.mix import mix

            images, targets = mix(images, targets, num_classes, self.cfg.augment, step_seed)
        images = images.to(self.dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        inputs = dict(images=images, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      numeric=batch.numeric.to(self.dtype), categorical=batch.categorical)
        return inputs, targets, batch


class NonFiniteLoss(UserError, RuntimeError):
    """The loss or the weights became non-finite; the last good checkpoint is kept."""


@dataclass
class StepContext:
    """What every step of a stage shares: the device pipe, the stage's config and the loss's fixed inputs."""
    pipe: DevicePipe
    cfg: Config  # the stage's config (train.stages overrides applied)
    num_classes: int
    rank: int = 0
    class_weights: Optional[torch.Tensor] = None  # train.class_weights, else None
    teacher: Optional[Teacher] = None  # train.distill_from's predictions, else None


@dataclass
class StepResult:
    loss: float
    parts: dict[str, torch.Tensor]  # every loss term, named (for logging)
    boundary: bool  # this micro-step ended a gradient-accumulation cycle: the optimizer stepped
    size: int  # samples in the batch


def train_step(engine, batch: Batch, ctx: StepContext, epoch: int, i: int, global_step: int = 0) -> StepResult:
    """Micro-step ``i`` of ``epoch`` on a DeepSpeed engine; raises NonFiniteLoss before a non-finite loss is applied."""
    # mixup/cutmix draw: per (seed, rank, epoch, batch), so micro-batches and ranks mix differently
    inputs, targets, batch = ctx.pipe(batch, True, epoch, ctx.num_classes, step_seed=(ctx.cfg.run.seed, ctx.rank, epoch, i))
    out = engine(**inputs)
    teacher_probs = ctx.teacher.targets(batch.index) if ctx.teacher is not None else None
    loss, parts = training_loss(engine.module, out, targets, ctx.cfg, ctx.class_weights, teacher_probs)
    # The step's one CPU-GPU sync, on purpose: a NaN/inf loss stops the run before backward() applies it, so the last
    # checkpoint stays good; the value read here is also what the progress bar and metrics log (no second sync).
    # fp16 is the exception: DeepSpeed's loss scaler skips overflowing steps itself.
    value = loss.item()
    if not math.isfinite(value) and ctx.pipe.dtype != torch.float16:
        raise NonFiniteLoss(f"non-finite loss {value} at epoch {epoch + 1}, step {global_step}, batch {i} (manifest "
                            f"rows {batch.index[:8].tolist()}...); last good checkpoint kept")
    # asked before step(), which advances DeepSpeed's micro-step counter (after it, this names the next batch)
    boundary = engine.is_gradient_accumulation_boundary()
    engine.backward(loss)
    engine.step()
    if boundary and hasattr(engine.module, "momentum_update"):
        engine.module.momentum_update()  # dual encoder: the momentum towers follow the updated ones
    return StepResult(value, parts, boundary, batch.size)
