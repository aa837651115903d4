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

Everything is batched.  The resize is one ``grid_sample`` at the source
positions of the shared sampling tables (``_tables``): it computes those
positions from float32 grid coordinates, which moves them by up to ~1e-5 px
against the tables' exact values (the tests state the resulting tolerance).
The jitter runs in place in float32 on the output-size image.

On CPU a batch runs in chunks of ``CPU_CHUNK`` samples so the float
intermediates stay near the core's cache; what every chunk needs per sample
(grid coordinates, jitter factors, erase boxes) is prepared once per batch as a
``_Plan`` that the chunks slice, and the chunks share scratch buffers.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from kernels.augment._tables import sampling_tables
from kernels.augment.params import AugmentParams

GRAY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale weights


def position_atol(in_size: int, std_min: float = 0.225) -> float:
    """Absolute tolerance on normalised outputs that the float32 grid coordinates allow.

    A position up to ``in_size`` goes through ~4 float32 roundings (the lerp, the two grid
    affine ops, grid_sample's unnormalise), so it moves by at most ``in_size * 2**-21`` px; a
    neighbour step of at most 1.0 turns that into a value error, which jitter can grow by up
    to ~2.7x (three factors <= 1.4) and normalisation by ``1 / std``.  Plus 1e-5 of
    float32 rounding for the rest of the pipeline.
    """
    return in_size * 2.0**-21 * 2.7 / std_min + 1e-5


class _Plan(NamedTuple):
    """Per-sample tensors of one batch, prepared once; ``chunk`` slices them for a CPU chunk."""
    gx: torch.Tensor  # [B,S] grid x coordinates (flip folded in)
    gy: torch.Tensor  # [B,S]
    brightness: torch.Tensor  # [B,1,1,1] float32, times the input unit (1/255 for uint8)
    contrast: torch.Tensor  # [B,1,1,1]
    saturation: torch.Tensor  # [B,1,1,1]
    hue: torch.Tensor  # [B,1,1]
    gray: torch.Tensor  # [B,1,1,1] bool
    erase: Optional[torch.Tensor]  # [B,1,S,S] bool, None when erasing is off
    unit: float  # x * unit is the resized image in [0, 1]

    def chunk(self, s: int, e: int) -> "_Plan":
        return _Plan(*(v[s:e] if isinstance(v, torch.Tensor) else v for v in self))


def _grid_axis(i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    """Source positions ``i0 + w (i1 - i0)`` (exactly i0 where the window edge clamps) as
    grid_sample's align_corners=False coordinate in [-1, 1]."""
    pos = i0.float() + w * (i1 - i0).float()
    return pos.mul_(2.0 / size).add_(1.0 / size - 1.0)


def _plan(params: AugmentParams, in_hw: tuple[int, int], out_size: int, unit: float, erasing: bool) -> _Plan:
    t = sampling_tables(params, out_size)

    def per_sample(v: torch.Tensor) -> torch.Tensor:
        return v.to(torch.float32).view(-1, 1, 1, 1)

    return _Plan(gx=_grid_axis(t.x0, t.x1, t.wx, in_hw[1]), gy=_grid_axis(t.y0, t.y1, t.wy, in_hw[0]),
                 brightness=per_sample(params.brightness) * unit, contrast=per_sample(params.contrast),
                 saturation=per_sample(params.saturation), hue=params.hue.to(torch.float32).view(-1, 1, 1),
                 gray=params.gray.view(-1, 1, 1, 1), erase=erase_mask(params, out_size) if erasing else None,
                 unit=unit)


def _resize(images: torch.Tensor, plan: _Plan, scratch=None) -> torch.Tensor:
    """[B,H,W,C] -> [B,C,S,S] float32 *in the input's units* (0..255 for uint8; ``colour`` scales it to
    [0, 1] in its first pass): crop + bilinear resize + flip as one batched grid_sample.

    ``scratch``: optional (float NHWC input, grid) buffers of at least B samples, reused across the CPU
    chunks of a batch (fresh large allocations cost a page fault per 4 KiB on every chunk).
    """
    B, S = plan.gx.shape
    if scratch is None:
        x = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        grid = torch.empty((B, S, S, 2), dtype=torch.float32, device=images.device)
    else:
        x, grid = scratch[0][:B], scratch[1][:B]
    x.copy_(images)  # NHWC float, one pass (a uint8 * float multiply would make a float temporary first)
    grid[..., 0] = plan.gx[:, None, :]
    grid[..., 1] = plan.gy[:, :, None]
    return F.grid_sample(x.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] -> [B,1,S,S]: r*0.2989 + g*0.587 + b*0.114, per element (so independent of the batch
    split, which a batched matmul is not), accumulated in place."""
    g = x[:, 0:1] * GRAY[0]
    return g.add_(x[:, 1:2], alpha=GRAY[1]).add_(x[:, 2:3], alpha=GRAY[2])


def _gray_mean(x: torch.Tensor) -> torch.Tensor:
    """[B,1,1,1] mean of the grayscale image, from the channel means (linear, so no gray image is made)."""
    return _gray(x.mean(dim=(2, 3), keepdim=True))


def _blend_(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """In place: ``clamp(x * f + other * (1 - f), 0, 1)`` (torchvision's _blend), three passes over x.
    ``other`` is a fresh temporary and is scaled in place.  (mul_ + add_ beat one addcmul here: with
    per-sample [B,1,1,1] operands addcmul runs 2-3x slower on CPU.)"""
    return x.mul_(f).add_(other.mul_(1.0 - f)).clamp_(0.0, 1.0)


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
    """``factor``: [B,1,1] hue shift in turns."""
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + factor, 1.0)
    return _hsv_to_rgb(h, s, v)


def colour(x: torch.Tensor, plan: _Plan, jitter: tuple[bool, bool, bool, bool], grayscale: bool) -> torch.Tensor:
    """Jitter (fixed order) and grayscale on [B,3,S,S] float32, in place; ``jitter`` says which ops are on.
    ``x * plan.unit`` is the image in [0, 1]; the scaling shares brightness's pass."""
    do_b, do_c, do_s, do_h = jitter
    if do_b:
        x = x.mul_(plan.brightness).clamp_(0.0, 1.0)
    elif plan.unit != 1.0:
        x = x.mul_(plan.unit)
    if do_c:
        x = _blend_(x, _gray_mean(x), plan.contrast)
    if do_s:
        x = _blend_(x, _gray(x), plan.saturation)
    if do_h:
        x = adjust_hue(x, plan.hue)
    if grayscale:
        x = torch.where(plan.gray, _gray(x).expand_as(x), x)
    return x


def erase_mask(params: AugmentParams, out_size: int) -> torch.Tensor:
    """[B,1,S,S] bool: the erased box of each sample (empty where erase is off)."""
    d = torch.arange(out_size, device=params.erase_top.device)
    top, left = params.erase_top[:, None], params.erase_left[:, None]
    rows = (d >= top) & (d < top + params.erase_h[:, None])
    cols = (d >= left) & (d < left + params.erase_w[:, None])
    return (params.erase[:, None, None] & rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


# Samples per step on CPU: a 2 x 3 x 224 x 224 float chunk (1.2 MB) stays in a core's L2 (2 beat 3, 4, 8).
CPU_CHUNK = 2


_compiled_finish = None


def _compiled():
    """``_finish`` through torch.compile: Inductor fuses the jitter/normalise passes into a few C++
    loops. The resize stays eager (Inductor's decomposition of grid_sample is slower on CPU).
    Compiled once per process per shape (tens of seconds; cached on disk by Inductor)."""
    global _compiled_finish
    if _compiled_finish is None:
        _compiled_finish = torch.compile(_finish, dynamic=False)
    return _compiled_finish


def apply_reference(images: torch.Tensor, params: AugmentParams, out_size: int, mean, std,
                    dtype: torch.dtype = torch.float32, channels_last: bool = False,
                    jitter: tuple[bool, bool, bool, bool] = (True, True, True, True),
                    grayscale: bool = True, erasing: bool = True, compile: bool = False) -> torch.Tensor:
    """The whole pipeline with explicit params (see module docstring for the contract).

    ``compile=True`` runs the colour/normalise part through torch.compile (same results to float rounding).
    """
    B, H, W, _ = images.shape
    dev = images.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unit = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    plan = _plan(params.to(dev), (H, W), out_size, unit, erasing)
    norm = (torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1))
    finish = _compiled() if compile else _finish
    if dev.type != "cpu" or B <= CPU_CHUNK:
        return finish(_resize(images, plan), plan, norm, jitter, grayscale).to(dtype=dtype, memory_format=fmt)
    out = torch.empty((B, 3, out_size, out_size), dtype=dtype, memory_format=fmt)
    scratch = (torch.empty((CPU_CHUNK, H, W, 3)), torch.empty((CPU_CHUNK, out_size, out_size, 2)))
    for s in range(0, B, CPU_CHUNK):
        e = min(B, s + CPU_CHUNK)
        p = plan.chunk(s, e)
        x = _resize(images[s:e], p, scratch)
        if compile:
            out[s:e] = finish(x, p, norm, jitter, grayscale)
        else:
            finish(x, p, norm, jitter, grayscale, out=out[s:e])
    return out


def _finish(x, plan: _Plan, norm, jitter, grayscale, out=None) -> torch.Tensor:
    """Colour, normalise and erase the resized [B,3,S,S] batch, in place (eager) or into ``out``."""
    x = colour(x, plan, jitter, grayscale)
    x = torch.div(x.sub_(norm[0]), norm[1], out=x if out is None else out)
    if plan.erase is not None:
        x = x.masked_fill_(plan.erase, 0.0)
    return x
