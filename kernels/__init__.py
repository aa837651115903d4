"""GPU kernels with their plain-PyTorch references.

``Augmenter`` is the entry point of the batched image augmentation: it picks
the implementation once (``engine.hardware.choose_augment_impl``) and turns a
uint8 NHWC batch, on any device, into a normalised ``[B,3,S,S]`` float batch.
Triton is imported only when the Triton implementation is used.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

from engine import hardware, optional
from kernels.augment.params import AugmentParams, eval_params, sample_params
from kernels.augment.reference import apply_reference
from kernels.config import AugmentConfig
from kernels.mix import MixDecision, mix, mix_decision

log = logging.getLogger("kernels")

__all__ = ["AugmentConfig", "AugmentParams", "Augmenter", "MixDecision", "apply_reference", "apply_triton",
           "eval_params", "mix", "mix_decision", "sample_params"]


def apply_triton(images: torch.Tensor, params: AugmentParams, out_size: int, mean, std, **kw) -> torch.Tensor:
    """Fused Triton implementation, same contract as ``apply_reference``; imports triton on first use."""
    optional.require("triton", "augment.impl=triton", otherwise="set augment.impl=reference")
    from kernels.augment.triton_kernels import apply_triton as _apply

    return _apply(images, params, out_size, mean, std, **kw)


class Augmenter:
    """Batched train/eval augmentation for one run (mixup/cutmix: ``kernels.mix``, on any backend's batches).

    Takes: ``images`` uint8 ``[B,H,W,3]`` (any strides) on the training device.
    Emits: ``[B,3,S,S]`` of ``dtype`` on the same device, NCHW-contiguous or
    ``torch.channels_last``, normalised with ``cfg.mean``/``cfg.std``.
    Training randomness is a pure function of (seed, epoch, sample_id).
    """

    def __init__(self, cfg: AugmentConfig, out_size: int, seed: int, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, impl: Optional[str] = None, device=None):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"Augmenter dtype must be float32, float16 or bfloat16, got {dtype}")
        self.cfg, self.out_size, self.seed = cfg, int(out_size), int(seed)
        self.dtype, self.channels_last = dtype, channels_last
        info = hardware.device_info(device)
        self.impl = impl if impl is not None else hardware.choose_augment_impl(info, cfg.impl)
        if self.impl not in ("reference", "triton"):
            raise ValueError(f"Augmenter impl={self.impl!r}: choose 'reference' or 'triton'")
        log.info("augmentation: %s implementation on %s", self.impl, info.name)
        if self.impl == "triton":
            self._apply = apply_triton
        else:
            self._apply = functools.partial(apply_reference, compile=cfg.compile_reference)
        self._jitter = (cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0)

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"Augmenter expects uint8 NHWC images [B,H,W,3], got {images.dtype} {tuple(images.shape)}")

    def train(self, images_u8_nhwc: torch.Tensor, sample_ids: torch.Tensor, epoch: int) -> torch.Tensor:
        self._check(images_u8_nhwc)
        B, H, W, _ = images_u8_nhwc.shape
        if sample_ids.numel() != B:
            raise ValueError(f"got {sample_ids.numel()} sample_ids for a batch of {B} images")
        params = sample_params(self.cfg, self.seed, epoch, sample_ids, (H, W), self.out_size)
        return self._apply(images_u8_nhwc, params.to(images_u8_nhwc.device), self.out_size, self.cfg.mean, self.cfg.std,
                           dtype=self.dtype, channels_last=self.channels_last, jitter=self._jitter,
                           grayscale=self.cfg.grayscale > 0, erasing=self.cfg.erasing > 0)

    def eval(self, images_u8_nhwc: torch.Tensor) -> torch.Tensor:
        self._check(images_u8_nhwc)
        B, H, W, _ = images_u8_nhwc.shape
        params = eval_params(B, (H, W), self.out_size, self.cfg.eval_crop_pct)
        return self._apply(images_u8_nhwc, params.to(images_u8_nhwc.device), self.out_size, self.cfg.mean, self.cfg.std,
                           dtype=self.dtype, channels_last=self.channels_last, jitter=(False,) * 4,
                           grayscale=False, erasing=False)
