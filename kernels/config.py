"""Config of the batched image augmentation (random resized crop ... normalise)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    impl: Literal["auto", "reference", "triton"] = "auto"  # auto: Triton on sm_80+, reference elsewhere
    # torch.compile the reference's jitter/normalise: 0-15% on CPU (docs/benchmarks.md), a one-off ~20-60 s compile
    compile_reference: bool = False
    scale: tuple[float, float] = (0.08, 1.0)  # random resized crop: area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range
    hflip: float = 0.5  # horizontal flip probability
    brightness: float = 0.4  # colour jitter strengths (0 = off), torchvision's meaning
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0  # in [0, 0.5]
    grayscale: float = 0.0  # probability of converting to grayscale
    erasing: float = 0.0  # random erasing probability
    mixup_alpha: float = 0.0  # 0 = off
    cutmix_alpha: float = 0.0  # 0 = off
    mix_prob: float = 1.0  # probability that mixup/cutmix is applied to a batch
    eval_crop_pct: float = 0.875  # evaluation: resize to size/crop_pct then centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augment.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"augment.ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        for key in ("hflip", "grayscale", "erasing", "mix_prob"):
            v = getattr(self, key)
            if not 0 <= v <= 1:
                raise ValueError(f"augment.{key} is a probability, got {v}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        for key in ("brightness", "contrast", "saturation", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ValueError(f"augment.{key} must be >= 0 (0 = off), got {getattr(self, key)}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"augment.std must be positive, got {list(self.std)}")
        if not 0 < self.eval_crop_pct <= 1:
            raise ValueError(f"augment.eval_crop_pct must be in (0, 1], got {self.eval_crop_pct}")
