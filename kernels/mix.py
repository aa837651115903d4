"""Mixup and CutMix on a batch and its labels (timm's semantics, seeded per step).

Contract: ``mix(images [B,C,H,W] float, labels [B] int, num_classes, cfg, step_seed)``
returns ``(images', soft_labels [B, num_classes] float32)`` on the images' device;
each sample is mixed with its mirror in the batch (``flip(0)``), and the soft
labels are ``lam * onehot(y) + (1 - lam) * onehot(y.flip(0))``.  For CutMix lam
is corrected to the pasted area after clipping the box to the image.  Both
alphas 0 (or the mix_prob draw failing) return the images untouched and the
one-hot labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from kernels.config import AugmentConfig


@dataclass(frozen=True)
class MixDecision:
    kind: str  # "none", "mixup" or "cutmix"
    lam: float  # weight of the original sample (after CutMix area correction)
    box: Optional[tuple[int, int, int, int]] = None  # cutmix (y0, y1, x0, x1), half-open


def mix_decision(cfg: AugmentConfig, step_seed: int | Sequence[int], hw: tuple[int, int]) -> MixDecision:
    """What ``mix`` will do for this step: a pure function of (cfg, step_seed, image size); ``step_seed`` is an
    int or a tuple of ints (the trainer passes (run seed, rank, epoch, batch))."""
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    rng = np.random.default_rng(step_seed)
    if not (use_mixup or use_cutmix) or rng.random() >= cfg.mix_prob:
        return MixDecision("none", 1.0)
    cutmix = use_cutmix and (not use_mixup or rng.random() < 0.5)  # timm's switch_prob = 0.5
    alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not cutmix:
        return MixDecision("mixup", lam)
    H, W = hw
    cut = math.sqrt(1.0 - lam)  # timm rand_bbox
    ch, cw = int(H * cut), int(W * cut)
    cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
    y0, y1 = int(np.clip(cy - ch // 2, 0, H)), int(np.clip(cy + ch // 2, 0, H))
    x0, x1 = int(np.clip(cx - cw // 2, 0, W)), int(np.clip(cx + cw // 2, 0, W))
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)
    return MixDecision("cutmix", lam, (y0, y1, x0, x1))


def mix(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: AugmentConfig,
        step_seed: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if images.dim() != 4:
        raise ValueError(f"mix expects [B,C,H,W] images, got shape {tuple(images.shape)}")
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(device=images.device, dtype=torch.float32)
    d = mix_decision(cfg, step_seed, (images.shape[-2], images.shape[-1]))
    if d.kind == "none":
        return images, onehot
    soft = onehot * d.lam + onehot.flip(0) * (1.0 - d.lam)
    if d.kind == "mixup":
        return images * d.lam + images.flip(0) * (1.0 - d.lam), soft
    y0, y1, x0, x1 = d.box
    out = images.clone()
    out[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
    return out, soft
