"""What happens to a batch on the device: augmentation, casting, forward, loss."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from engine import hardware
from engine.config import Config
from engine.data.batch import Batch


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


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: Config,
                        class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Loss in fp32 whatever the model's precision; targets are indices or soft labels [B, C]."""
    logits = logits.float()
    smoothing = cfg.train.label_smoothing
    if cfg.train.loss == "focal":
        logp = F.log_softmax(logits, dim=1)
        soft = _smoothed(targets if targets.ndim == 2 else F.one_hot(targets, logits.shape[1]).float(), smoothing)
        # clamped: d/dp (1-p)^gamma is infinite at p = 1 for gamma < 1, which turned a finite loss into NaN gradients
        focal = (1 - logp.exp()).clamp_min(1e-12) ** cfg.train.focal_gamma
        per_class = -(soft * focal * logp)
        if class_weights is not None:
            per_class = per_class * class_weights
        return per_class.sum(1).mean()
    if targets.ndim == 2 and class_weights is not None:
        # PyTorch normalises weighted CE by the targets' total weight for class indices but takes a plain mean for
        # soft targets, so turning on mixup would rescale the loss by a data-dependent factor. Normalise both alike.
        weighted = _smoothed(targets, smoothing) * class_weights
        return -(weighted * F.log_softmax(logits, dim=1)).sum() / weighted.sum()
    return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=smoothing)


def _smoothed(soft: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Soft targets [B, C] with label smoothing, PyTorch's definition: (1 - e) * t + e / C."""
    return soft * (1 - smoothing) + smoothing / soft.shape[1] if smoothing else soft


def training_loss(model, out, targets: torch.Tensor, cfg: Config, class_weights: Optional[torch.Tensor] = None,
                  teacher_probs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Classification loss plus the model's own (already weighted) auxiliary / contrastive losses, in fp32.

    Returns (total, parts); ``parts`` names every term for logging.
    """
    if cfg.model.task == "retrieval":  # a dual encoder's own contrastive loss (queue, hard negatives), no labels
        total, parts = model.loss(out)
        return total.float(), {k: v.float() for k, v in parts.items()}
    if class_weights is not None:
        class_weights = class_weights.to(out.logits.device)
    parts = {"cls": classification_loss(out.logits, targets, cfg, class_weights)}
    if teacher_probs is not None:  # train.distill_from: soft targets of a finished run
        from engine.training.distill import add_distillation

        parts = add_distillation(parts, out.logits, teacher_probs, cfg)
    aux = getattr(model, "auxiliary_losses", None)
    if callable(aux):
        parts.update({k: v.float() for k, v in aux(out, targets).items()})
    return sum(parts.values()), parts
