"""Per-sample augmentation parameters: a pure function of (seed, epoch, sample_id).

Draws come from a counter-based hash (splitmix64 over the key), vectorised in
numpy, so a sample's parameters never depend on the batch it lands in, the
world size, or how many samples were drawn before it.  The parameters are a
handful of [B] tensors; both implementations (reference and Triton) consume
the same object, which is what lets the tests feed them identical inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from kernels.config import AugmentConfig

# Fixed stream layout: each sample draws _N_DRAWS uniforms; slot k always means the same thing.
_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop tries 10 boxes before falling back to a centre crop
_ERASE_ATTEMPTS = 10  # torchvision RandomErasing likewise
_SLOT_CROP = 0  # 2 per attempt: area fraction, log aspect ratio
_SLOT_CROP_POS = _SLOT_CROP + 2 * _CROP_ATTEMPTS  # top, left of the chosen box
_SLOT_FLIP = _SLOT_CROP_POS + 2
_SLOT_JITTER = _SLOT_FLIP + 1  # brightness, contrast, saturation, hue
_SLOT_GRAY = _SLOT_JITTER + 4
_SLOT_ERASE = _SLOT_GRAY + 1  # apply?
_SLOT_ERASE_BOX = _SLOT_ERASE + 1  # 2 per attempt: area fraction, log aspect ratio
_SLOT_ERASE_POS = _SLOT_ERASE_BOX + 2 * _ERASE_ATTEMPTS  # top, left
_N_DRAWS = _SLOT_ERASE_POS + 2

ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults; the erased value is 0 after normalisation
ERASE_RATIO = (0.3, 3.3)

def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, sample_ids: np.ndarray, n: int) -> np.ndarray:
    """[B, n] float64 uniforms in [0, 1): draw k of sample i is hash(seed, epoch, id_i, k)."""
    with np.errstate(over="ignore"):
        ids = np.asarray(sample_ids, dtype=np.int64).astype(np.uint64)
        key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        key = _splitmix64(key ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF))
        key = _splitmix64(key ^ ids)  # [B]
        ctr = key[:, None] ^ (np.arange(n, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03))
        bits = _splitmix64(_splitmix64(ctr))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class AugmentParams:
    """Per-sample parameters, every field a [B] tensor on one device.

    Geometry is a separable affine sampling window per axis: output pixel d
    samples source coordinate ``(d + offset + 0.5) * scale - 0.5`` inside the
    window ``[start, start + length)`` (clamped to it, PyTorch's bilinear
    ``align_corners=False`` rule).  A random resized crop is start=box origin,
    length=box size, scale=box/out, offset=0; evaluation is the whole image
    resized then centre-cropped (offset = crop origin in the resized image).
    """

    top: torch.Tensor  # int64, source window origin (rows)
    left: torch.Tensor  # int64
    height: torch.Tensor  # int64, source window size
    width: torch.Tensor  # int64
    scale_y: torch.Tensor  # float64, source pixels per output pixel
    scale_x: torch.Tensor
    offset_y: torch.Tensor  # float64, output-pixel offset (centre crop in eval)
    offset_x: torch.Tensor
    flip: torch.Tensor  # bool, horizontal flip after resize
    brightness: torch.Tensor  # float32 factors, torchvision's meaning (1 = identity; hue 0 = identity)
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor  # bool, convert to 3-channel grayscale after jitter
    erase: torch.Tensor  # bool, zero a box of the normalised output
    erase_top: torch.Tensor  # int64, erase box in output pixels
    erase_left: torch.Tensor
    erase_h: torch.Tensor
    erase_w: torch.Tensor

    def to(self, device) -> "AugmentParams":
        return AugmentParams(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def __len__(self) -> int:
        return self.top.shape[0]

    def select(self, index) -> "AugmentParams":
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _boxes(u_area, u_logr, area: float, scale, ratio) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's box draw for every (sample, attempt): (round(sqrt(A*r)), round(sqrt(A/r)))."""
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = np.exp(lr[0] + (lr[1] - lr[0]) * u_logr)
    return np.round(np.sqrt(target * aspect)).astype(np.int64), np.round(np.sqrt(target / aspect)).astype(np.int64)


def _first_true(ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found = ok.any(axis=1)
    return found, np.argmax(ok, axis=1)


def sample_params(cfg: AugmentConfig, seed: int, epoch: int, sample_ids: torch.Tensor,
                  in_hw: tuple[int, int], out_size: int) -> AugmentParams:
    """Training parameters (CPU tensors) for the samples ``sample_ids`` (global manifest rows)."""
    ids = sample_ids.detach().cpu().numpy().astype(np.int64).reshape(-1)
    n = ids.shape[0]
    H, W = in_hw
    u = uniforms(seed, epoch, ids, _N_DRAWS)

    # Random resized crop (torchvision RandomResizedCrop.get_params, w from sqrt(area*r), h from sqrt(area/r)).
    ua = u[:, _SLOT_CROP:_SLOT_CROP_POS:2]
    ur = u[:, _SLOT_CROP + 1:_SLOT_CROP_POS:2]
    cw, ch = _boxes(ua, ur, float(H * W), cfg.scale, cfg.ratio)
    found, k = _first_true((cw > 0) & (cw <= W) & (ch > 0) & (ch <= H))
    rows = np.arange(n)
    h, w = ch[rows, k], cw[rows, k]
    in_ratio = W / H  # fallback: centre crop clamped to the ratio range
    if in_ratio < min(cfg.ratio):
        fw, fh = W, int(round(W / min(cfg.ratio)))
    elif in_ratio > max(cfg.ratio):
        fh, fw = H, int(round(H * max(cfg.ratio)))
    else:
        fw, fh = W, H
    h = np.where(found, h, fh)
    w = np.where(found, w, fw)
    top = np.where(found, np.floor(u[:, _SLOT_CROP_POS] * (H - h + 1)), (H - h) // 2).astype(np.int64)
    left = np.where(found, np.floor(u[:, _SLOT_CROP_POS + 1] * (W - w + 1)), (W - w) // 2).astype(np.int64)

    flip = u[:, _SLOT_FLIP] < cfg.hflip

    def factor(slot: int, strength: float) -> np.ndarray:
        lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
        return lo + (hi - lo) * u[:, slot] if strength > 0 else np.ones(n)

    bright = factor(_SLOT_JITTER, cfg.brightness)
    contrast = factor(_SLOT_JITTER + 1, cfg.contrast)
    sat = factor(_SLOT_JITTER + 2, cfg.saturation)
    hue = (2 * u[:, _SLOT_JITTER + 3] - 1) * cfg.hue
    gray = u[:, _SLOT_GRAY] < cfg.grayscale

    # Random erasing (torchvision RandomErasing.get_params, h from sqrt(area*r), strictly inside).
    S = out_size
    ea = u[:, _SLOT_ERASE_BOX:_SLOT_ERASE_POS:2]
    er = u[:, _SLOT_ERASE_BOX + 1:_SLOT_ERASE_POS:2]
    eh, ew = _boxes(ea, er, float(S * S), ERASE_SCALE, ERASE_RATIO)
    efound, ek = _first_true((eh < S) & (ew < S) & (eh > 0) & (ew > 0))
    eh, ew = eh[rows, ek], ew[rows, ek]
    erase = (u[:, _SLOT_ERASE] < cfg.erasing) & efound
    etop = np.floor(u[:, _SLOT_ERASE_POS] * (S - eh + 1)).astype(np.int64)
    eleft = np.floor(u[:, _SLOT_ERASE_POS + 1] * (S - ew + 1)).astype(np.int64)
    zero = np.zeros(n, dtype=np.int64)

    t = torch.from_numpy
    return AugmentParams(
        top=t(top), left=t(left), height=t(h.astype(np.int64)), width=t(w.astype(np.int64)),
        scale_y=t(h / S), scale_x=t(w / S), offset_y=t(np.zeros(n)), offset_x=t(np.zeros(n)),
        flip=t(flip), brightness=t(bright).float(), contrast=t(contrast).float(),
        saturation=t(sat).float(), hue=t(hue).float(), gray=t(gray),
        erase=t(erase), erase_top=t(np.where(erase, etop, zero)), erase_left=t(np.where(erase, eleft, zero)),
        erase_h=t(np.where(erase, eh, zero)), erase_w=t(np.where(erase, ew, zero)),
    )


def eval_params(batch: int, in_hw: tuple[int, int], out_size: int, crop_pct: float) -> AugmentParams:
    """Deterministic: resize the shorter side to int(out_size / crop_pct) (torchvision Resize), centre crop out_size."""
    H, W = in_hw
    short = int(math.floor(out_size / crop_pct))
    if H <= W:
        rh, rw = short, int(short * W / H)
    else:
        rw, rh = short, int(short * H / W)
    oy = int(round((rh - out_size) / 2.0))  # torchvision center_crop
    ox = int(round((rw - out_size) / 2.0))

    def full(v, dtype):
        return torch.full((batch,), v, dtype=dtype)

    i64, f64, f32 = torch.int64, torch.float64, torch.float32
    return AugmentParams(
        top=full(0, i64), left=full(0, i64), height=full(H, i64), width=full(W, i64),
        scale_y=full(H / rh, f64), scale_x=full(W / rw, f64), offset_y=full(oy, f64), offset_x=full(ox, f64),
        flip=full(False, torch.bool), brightness=full(1.0, f32), contrast=full(1.0, f32),
        saturation=full(1.0, f32), hue=full(0.0, f32), gray=full(False, torch.bool),
        erase=full(False, torch.bool), erase_top=full(0, i64), erase_left=full(0, i64),
        erase_h=full(0, i64), erase_w=full(0, i64),
    )
