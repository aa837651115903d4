"""Bilinear sampling tables shared by both implementations.

For each sample and output row (column) we store the two source rows
(columns) and the weight of the second, following PyTorch's
``interpolate(mode="bilinear", align_corners=False, antialias=False)`` rule
inside the sample's source window.  The horizontal flip is folded in by
reversing the column tables.  Building them once, from the same params, is
what makes the reference and the Triton kernel sample identical positions;
they are tiny ([B, S] each) next to the images.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from kernels.augment.params import AugmentParams


class SamplingTables(NamedTuple):
    y0: torch.Tensor  # int32 [B, S], absolute source rows
    y1: torch.Tensor
    wy: torch.Tensor  # float32 [B, S], weight of y1
    x0: torch.Tensor  # int32 [B, S], absolute source columns (flip applied)
    x1: torch.Tensor
    wx: torch.Tensor


def _axis(start, length, scale, offset, size: int):
    d = torch.arange(size, dtype=torch.float64, device=start.device)
    src = ((d[None, :] + offset[:, None] + 0.5) * scale[:, None] - 0.5).clamp_(min=0.0)
    i0 = src.floor()
    lam = (src - i0).to(torch.float32)
    i0 = i0.to(torch.int64)
    last = (length - 1)[:, None]
    i1 = torch.minimum(i0 + 1, last)
    i0 = torch.minimum(i0, last)
    return (i0 + start[:, None]).to(torch.int32), (i1 + start[:, None]).to(torch.int32), lam


def sampling_tables(params: AugmentParams, out_size: int) -> SamplingTables:
    y0, y1, wy = _axis(params.top, params.height, params.scale_y, params.offset_y, out_size)
    x0, x1, wx = _axis(params.left, params.width, params.scale_x, params.offset_x, out_size)
    f = params.flip[:, None]
    x0, x1, wx = (torch.where(f, t.flip(1), t) for t in (x0, x1, wx))
    return SamplingTables(y0.contiguous(), y1.contiguous(), wy.contiguous(), x0.contiguous(), x1.contiguous(), wx.contiguous())
