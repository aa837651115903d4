"""Plain-PyTorch reference of the batched augmentation; runs on CPU and any CUDA card.

Contract: ``apply_reference(images [B,H,W,3] uint8 (or float in [0,1]), params, ...)``
returns ``[B,3,S,S]`` of ``dtype`` (NCHW-contiguous or channels_last), on the
images' device.  Pipeline, in this fixed order (torchvision semantics on float
images in [0, 1]):

1. random resized crop, bilinear (align_corners=False, no antialias), then hflip;
2. colour jitter: brightness, contrast, saturation, hue (torchvision's
   ColorJitter draws a random order per call; ours is fixed);
3. grayscale (3 channels) with probability p;
4. normalise ``(x - mean) / std``;
5. random erasing with value 0 (after normalisation, as torchvision's
   RandomErasing placed after Normalize).

Everything is batched: the resize is two gathers driven by [B, S] index/weight
tables; jitter runs in float32 on the output-size image.
"""
from __future__ import annotations

import torch

from kernels.augment._tables import sampling_tables
from kernels.augment.params import AugmentParams

GRAY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale weights


def _resize(images: torch.Tensor, params: AugmentParams, out_size: int) -> torch.Tensor:
    """[B,H,W,C] -> [B,C,S,S] float32 in [0, 1]; rows then columns, like the Triton kernel."""
    t = sampling_tables(params, out_size)
    B, H, W, C = images.shape
    S = out_size
    bi = torch.arange(B, device=images.device)[:, None]
    unit = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    wy = t.wy[:, :, None, None]
    rows = images[bi, t.y0.long()].float() * (1.0 - wy) + images[bi, t.y1.long()].float() * wy  # [B,S,W,C]
    rows = rows.permute(0, 3, 1, 2)  # [B,C,S,W] view, W innermost
    idx0 = t.x0.long()[:, None, None, :].expand(B, C, S, S)
    idx1 = t.x1.long()[:, None, None, :].expand(B, C, S, S)
    wx = t.wx[:, None, None, :]
    out = rows.gather(3, idx0) * (1.0 - wx) + rows.gather(3, idx1) * wx
    return out.mul_(unit) if unit != 1.0 else out


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] -> [B,1,S,S]."""
    return (x[:, 0] * GRAY[0] + x[:, 1] * GRAY[1] + x[:, 2] * GRAY[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (x * f + other * (1.0 - f)).clamp_(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's _rgb_to_hsv, same operations in the same order."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    crange = maxc - minc
    ones = torch.ones_like(maxc)
    s = crange / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, crange)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    neq_r = maxc != r
    eq_g = maxc == g
    hg = (rc + 2.0 - bc) * (eq_g & neq_r)
    hr = (bc - gc) * ~neq_r
    hb = (gc + 4.0 - rc) * (neq_r & ~eq_g)
    h = torch.fmod((hr + hg + hb) * (1.0 / 6.0) + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torchvision's _hsv_to_rgb; the sector table lookup written as selects."""
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = torch.remainder(i.to(torch.int32), 6)
    sxf = s * f
    q = ((1.0 - sxf) * v).clamp_(0.0, 1.0)
    t = ((sxf + (1.0 - s)) * v).clamp_(0.0, 1.0)
    p = ((1.0 - s) * v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t))  # index 0..3
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=h.device)
    chans = [vpqt.gather(0, select[c][i.long()].unsqueeze(0)).squeeze(0) for c in range(3)]
    return torch.stack(chans, 1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + factor.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(h, s, v)


def colour(x: torch.Tensor, params: AugmentParams, jitter: tuple[bool, bool, bool, bool], grayscale: bool) -> torch.Tensor:
    """Jitter (fixed order) and grayscale on [B,3,S,S] float32 in [0, 1]; ``jitter`` says which ops are on."""
    do_b, do_c, do_s, do_h = jitter
    if do_b:
        x = x.mul_(params.brightness.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    if do_c:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = _blend(x, mean, params.contrast)
    if do_s:
        x = _blend(x, _gray(x), params.saturation)
    if do_h:
        x = adjust_hue(x, params.hue)
    if grayscale:
        x = torch.where(params.gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    return x


def erase_mask(params: AugmentParams, out_size: int) -> torch.Tensor:
    """[B,1,S,S] bool: the erased box of each sample (empty where erase is off)."""
    d = torch.arange(out_size, device=params.erase_top.device)
    top, left = params.erase_top[:, None], params.erase_left[:, None]
    rows = (d >= top) & (d < top + params.erase_h[:, None])
    cols = (d >= left) & (d < left + params.erase_w[:, None])
    return (params.erase[:, None, None] & rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


CPU_CHUNK = 4  # samples per step on CPU: keeps the float intermediates in cache (4x faster than a whole 64-batch)


_compiled_apply = None


def _compiled():
    """``_apply`` through torch.compile: Inductor fuses the ~20 eager passes into a few C++ loops
    (2-3x on CPU). Compiled once per process per shape (tens of seconds; cached on disk by Inductor)."""
    global _compiled_apply
    if _compiled_apply is None:
        _compiled_apply = torch.compile(_apply, dynamic=False)
    return _compiled_apply


def apply_reference(images: torch.Tensor, params: AugmentParams, out_size: int, mean, std,
                    dtype: torch.dtype = torch.float32, channels_last: bool = False,
                    jitter: tuple[bool, bool, bool, bool] = (True, True, True, True),
                    grayscale: bool = True, erasing: bool = True, compile: bool = False) -> torch.Tensor:
    """The whole pipeline with explicit params (see module docstring for the contract).

    ``compile=True`` runs the same function through torch.compile (same results to float rounding).
    """
    B = images.shape[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    params = params.to(images.device)
    fn = _compiled() if compile else _apply
    if images.device.type != "cpu" or B <= CPU_CHUNK:
        return fn(images, params, out_size, mean, std, jitter, grayscale, erasing).to(dtype=dtype, memory_format=fmt)
    out = torch.empty((B, 3, out_size, out_size), dtype=dtype, memory_format=fmt)
    for s in range(0, B, CPU_CHUNK):
        e = min(B, s + CPU_CHUNK)
        out[s:e] = fn(images[s:e], params.select(slice(s, e)), out_size, mean, std, jitter, grayscale, erasing)
    return out


def _apply(images, params, out_size, mean, std, jitter, grayscale, erasing) -> torch.Tensor:
    x = _resize(images, params, out_size)
    x = colour(x, params, jitter, grayscale)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.sub_(m).div_(s)
    if erasing:
        x = x.masked_fill_(erase_mask(params, out_size), 0.0)
    return x
