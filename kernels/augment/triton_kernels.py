"""Fused Triton augmentation (sm_80+, or anywhere under TRITON_INTERPRET=1).

One program per (sample, tile of BLOCK output pixels) does crop + bilinear
resize + flip + jitter + grayscale + normalise + erase + cast, writing all three
channels through the output strides (so NCHW and channels_last are the same
kernel).  Per-sample parameters arrive as small tensors: the [B, S] sampling
tables shared with the reference, a [B, 5] float block of jitter factors and a
[B, 5] int block for erasing.

Contrast needs the mean of the grayscale of the image being adjusted (the
resized crop after brightness, torchvision's order).  ``_gray_sum_kernel`` is a
first pass over the same output grid that recomputes only the resized pixel,
brightness and grayscale, and writes one partial sum per tile; the host sums
the [B, tiles] partials (deterministic, no atomics).  It reads the input once
more and writes nothing of image size, and it is skipped when contrast is off.

This module imports triton at import time; ``kernels`` imports it lazily.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.augment._tables import sampling_tables
from kernels.augment.params import AugmentParams
from kernels.augment.reference import GRAY

BLOCK = 512  # output pixels per program


@triton.jit
def _sample_rgb(img, b, oy, ox, mask, S, s_ib, s_iy, s_ix, s_ic,
                y0_ptr, y1_ptr, wy_ptr, x0_ptr, x1_ptr, wx_ptr, UNIT: tl.constexpr):
    """Bilinear sample of all three channels at output pixels (oy, ox) of sample b, rows then columns."""
    t = b * S
    y0 = tl.load(y0_ptr + t + oy, mask=mask, other=0).to(tl.int64)
    y1 = tl.load(y1_ptr + t + oy, mask=mask, other=0).to(tl.int64)
    wy = tl.load(wy_ptr + t + oy, mask=mask, other=0.0)
    x0 = tl.load(x0_ptr + t + ox, mask=mask, other=0).to(tl.int64)
    x1 = tl.load(x1_ptr + t + ox, mask=mask, other=0).to(tl.int64)
    wx = tl.load(wx_ptr + t + ox, mask=mask, other=0.0)
    base = img + b * s_ib
    p00 = base + y0 * s_iy + x0 * s_ix
    p01 = base + y0 * s_iy + x1 * s_ix
    p10 = base + y1 * s_iy + x0 * s_ix
    p11 = base + y1 * s_iy + x1 * s_ix
    ry = 1.0 - wy
    rx = 1.0 - wx
    a = tl.load(p00, mask=mask, other=0).to(tl.float32) * ry + tl.load(p10, mask=mask, other=0).to(tl.float32) * wy
    c = tl.load(p01, mask=mask, other=0).to(tl.float32) * ry + tl.load(p11, mask=mask, other=0).to(tl.float32) * wy
    r = (a * rx + c * wx) * UNIT
    a = tl.load(p00 + s_ic, mask=mask, other=0).to(tl.float32) * ry + tl.load(p10 + s_ic, mask=mask, other=0).to(tl.float32) * wy
    c = tl.load(p01 + s_ic, mask=mask, other=0).to(tl.float32) * ry + tl.load(p11 + s_ic, mask=mask, other=0).to(tl.float32) * wy
    g = (a * rx + c * wx) * UNIT
    a = (tl.load(p00 + 2 * s_ic, mask=mask, other=0).to(tl.float32) * ry
         + tl.load(p10 + 2 * s_ic, mask=mask, other=0).to(tl.float32) * wy)
    c = (tl.load(p01 + 2 * s_ic, mask=mask, other=0).to(tl.float32) * ry
         + tl.load(p11 + 2 * s_ic, mask=mask, other=0).to(tl.float32) * wy)
    bl = (a * rx + c * wx) * UNIT
    return r, g, bl


@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _tile_rgb(img, b, tile, S, s_ib, s_iy, s_ix, s_ic, y0_ptr, y1_ptr, wy_ptr, x0_ptr, x1_ptr, wx_ptr, fparams,
              UNIT: tl.constexpr, DO_BRIGHT: tl.constexpr, BLOCK: tl.constexpr):
    """One tile of sample ``b``: resized (+ flipped) RGB in [0, 1], brightness applied; both passes start here."""
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S * S
    oy = offs // S
    ox = offs % S
    r, g, bl = _sample_rgb(img, b, oy, ox, mask, S, s_ib, s_iy, s_ix, s_ic,
                           y0_ptr, y1_ptr, wy_ptr, x0_ptr, x1_ptr, wx_ptr, UNIT)
    if DO_BRIGHT:
        f = tl.load(fparams + b * 5)
        r = _clamp01(r * f)
        g = _clamp01(g * f)
        bl = _clamp01(bl * f)
    return r, g, bl, mask, oy, ox


@triton.jit
def _gray_sum_kernel(img, partial, y0_ptr, y1_ptr, wy_ptr, x0_ptr, x1_ptr, wx_ptr, fparams,
                     S, n_tiles, s_ib, s_iy, s_ix, s_ic,
                     G0: tl.constexpr, G1: tl.constexpr, G2: tl.constexpr,
                     UNIT: tl.constexpr, DO_BRIGHT: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    r, g, bl, mask, oy, ox = _tile_rgb(img, b, tile, S, s_ib, s_iy, s_ix, s_ic, y0_ptr, y1_ptr, wy_ptr, x0_ptr,
                                       x1_ptr, wx_ptr, fparams, UNIT, DO_BRIGHT, BLOCK)
    gray = tl.where(mask, r * G0 + g * G1 + bl * G2, 0.0)
    tl.store(partial + b * n_tiles + tile, tl.sum(gray, axis=0))


@triton.jit
def _augment_kernel(img, out, y0_ptr, y1_ptr, wy_ptr, x0_ptr, x1_ptr, wx_ptr, fparams, iparams, gmean,
                    S, s_ib, s_iy, s_ix, s_ic, s_ob, s_oc, s_oy, s_ox,
                    m0, m1, m2, sd0, sd1, sd2,
                    G0: tl.constexpr, G1: tl.constexpr, G2: tl.constexpr, UNIT: tl.constexpr,
                    DO_BRIGHT: tl.constexpr, DO_CONTRAST: tl.constexpr, DO_SAT: tl.constexpr,
                    DO_HUE: tl.constexpr, DO_GRAY: tl.constexpr, DO_ERASE: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    r, g, bl, mask, oy, ox = _tile_rgb(img, b, tile, S, s_ib, s_iy, s_ix, s_ic, y0_ptr, y1_ptr, wy_ptr, x0_ptr,
                                       x1_ptr, wx_ptr, fparams, UNIT, DO_BRIGHT, BLOCK)
    fp = fparams + b * 5  # brightness, contrast, saturation, hue, gray
    if DO_CONTRAST:
        f = tl.load(fp + 1)
        m = tl.load(gmean + b) * (1.0 - f)
        r = _clamp01(r * f + m)
        g = _clamp01(g * f + m)
        bl = _clamp01(bl * f + m)
    if DO_SAT:
        f = tl.load(fp + 2)
        gr = (r * G0 + g * G1 + bl * G2) * (1.0 - f)
        r = _clamp01(r * f + gr)
        g = _clamp01(g * f + gr)
        bl = _clamp01(bl * f + gr)
    if DO_HUE:
        # torchvision's _rgb_to_hsv / _hsv_to_rgb, operation for operation.
        maxc = tl.maximum(tl.maximum(r, g), bl)
        minc = tl.minimum(tl.minimum(r, g), bl)
        eqc = maxc == minc
        crange = maxc - minc
        s = crange / tl.where(eqc, 1.0, maxc)
        div = tl.where(eqc, 1.0, crange)
        rc = (maxc - r) / div
        gc = (maxc - g) / div
        bc = (maxc - bl) / div
        neq_r = maxc != r
        eq_g = maxc == g
        hg = tl.where(eq_g & neq_r, rc + 2.0 - bc, 0.0)
        hr = tl.where(neq_r, 0.0, bc - gc)
        hb = tl.where(neq_r & (maxc != g), gc + 4.0 - rc, 0.0)
        h = (hr + hg + hb) * (1.0 / 6.0) + 1.0
        h = h - tl.floor(h)  # fmod(h, 1) for h > 0
        h = h + tl.load(fp + 3)
        h = h - tl.floor(h)  # remainder(h, 1)
        h6 = h * 6.0
        fi = tl.floor(h6)
        fr = h6 - fi
        sector = fi.to(tl.int32) % 6
        sxf = s * fr
        v = maxc
        q = _clamp01((1.0 - sxf) * v)
        t = _clamp01((sxf + (1.0 - s)) * v)
        p = _clamp01((1.0 - s) * v)
        r = tl.where(sector == 0, v, tl.where(sector == 1, q, tl.where(sector == 4, t, tl.where(sector == 5, v, p))))
        g = tl.where(sector == 0, t, tl.where(sector == 3, q, tl.where(sector >= 4, p, v)))
        bl = tl.where(sector == 2, t, tl.where(sector == 5, q, tl.where(sector <= 1, p, v)))
    if DO_GRAY:
        gray_on = tl.load(fp + 4) != 0.0
        gr = r * G0 + g * G1 + bl * G2
        r = tl.where(gray_on, gr, r)
        g = tl.where(gray_on, gr, g)
        bl = tl.where(gray_on, gr, bl)
    r = (r - m0) / sd0
    g = (g - m1) / sd1
    bl = (bl - m2) / sd2
    if DO_ERASE:
        ip = iparams + b * 5  # erase, top, left, h, w
        et = tl.load(ip + 1)
        el = tl.load(ip + 2)
        inside = (tl.load(ip) != 0) & (oy >= et) & (oy < et + tl.load(ip + 3)) & (ox >= el) & (ox < el + tl.load(ip + 4))
        r = tl.where(inside, 0.0, r)
        g = tl.where(inside, 0.0, g)
        bl = tl.where(inside, 0.0, bl)
    dst = out + b * s_ob + oy * s_oy + ox * s_ox
    ty = out.dtype.element_ty
    tl.store(dst, r.to(ty), mask=mask)
    tl.store(dst + s_oc, g.to(ty), mask=mask)
    tl.store(dst + 2 * s_oc, bl.to(ty), mask=mask)


class Prepared(NamedTuple):
    """Per-batch kernel arguments built from ``AugmentParams`` (small tensors on the images' device)."""
    tables: tuple  # the six [B, S] sampling tables (y0, y1, wy, x0, x1, wx)
    fparams: torch.Tensor  # [B, 5] float32: brightness, contrast, saturation, hue, gray
    iparams: torch.Tensor  # [B, 5] int32: erase, top, left, h, w


def prepare(params: AugmentParams, out_size: int, device) -> Prepared:
    params = params.to(device)
    fparams = torch.stack([params.brightness, params.contrast, params.saturation, params.hue,
                           params.gray.float()], 1).float().contiguous()
    iparams = torch.stack([params.erase.long(), params.erase_top, params.erase_left,
                           params.erase_h, params.erase_w], 1).to(torch.int32).contiguous()
    return Prepared(tuple(sampling_tables(params, out_size)), fparams, iparams)


def launch(images: torch.Tensor, prep: Prepared, out_size: int, mean, std, dtype: torch.dtype = torch.float32,
           channels_last: bool = False, jitter: tuple[bool, bool, bool, bool] = (True, True, True, True),
           grayscale: bool = True, erasing: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel launches alone (the contrast-mean pass when contrast is on, then the fused pass)."""
    B, H, W, C = images.shape
    if C != 3:
        raise ValueError(f"expected NHWC images with 3 channels, got shape {tuple(images.shape)}")
    S = out_size
    dev = images.device
    if out is None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((B, 3, S, S), dtype=dtype, device=dev, memory_format=fmt)
    unit = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    n_tiles = triton.cdiv(S * S, BLOCK)
    grid = (B, n_tiles)
    do_b, do_c, do_s, do_h = jitter
    gmean = prep.fparams.new_zeros(B)
    if do_c:
        partial = torch.empty((B, n_tiles), dtype=torch.float32, device=dev)
        _gray_sum_kernel[grid](images, partial, *prep.tables, prep.fparams, S, n_tiles, *images.stride(),
                               G0=GRAY[0], G1=GRAY[1], G2=GRAY[2], UNIT=unit, DO_BRIGHT=do_b, BLOCK=BLOCK)
        gmean = partial.sum(1) / (S * S)
    _augment_kernel[grid](images, out, *prep.tables, prep.fparams, prep.iparams, gmean, S, *images.stride(), *out.stride(),
                          float(mean[0]), float(mean[1]), float(mean[2]), float(std[0]), float(std[1]), float(std[2]),
                          G0=GRAY[0], G1=GRAY[1], G2=GRAY[2], UNIT=unit,
                          DO_BRIGHT=do_b, DO_CONTRAST=do_c, DO_SAT=do_s, DO_HUE=do_h,
                          DO_GRAY=grayscale, DO_ERASE=erasing, BLOCK=BLOCK)
    return out


def apply_triton(images: torch.Tensor, params: AugmentParams, out_size: int, mean, std, **kw) -> torch.Tensor:
    """Same contract as ``reference.apply_reference``; ``out`` (optional) is written in place."""
    return launch(images, prepare(params, out_size, images.device), out_size, mean, std, **kw)
