"""Fused Triton kernel vs the PyTorch reference on identical params (interpreter on CPU, compiled on sm_80+).

Tolerance: the two share sampling tables; the kernel samples at the tables'
exact positions, the reference's grid_sample at float32 grid coordinates, so
fp32 outputs agree to ``position_atol(input size)`` abs (derived in
reference.py; ~3e-4 at these sizes, 2% of one uint8 step after
normalisation) + 1e-5 rel.  For fp16/bf16 the float32 results may round to
neighbouring values, so we also allow one unit in the last place
(rtol 2**-10 / 2**-7).
The output is pre-filled with NaN so an element the kernel never writes fails.
Compiled on a GPU, float32 division is not correctly rounded, hence rtol 1e-4
for float32 there.
"""
import os

import pytest
import torch

from kernels import AugmentConfig, apply_reference, apply_triton, eval_params, sample_params
from kernels.augment.reference import position_atol

pytest.importorskip("triton")  # conftest has set TRITON_INTERPRET=1 on CPU-only machines

DEV = torch.device("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")  # chosen in conftest.py
RTOL = {torch.float32: 1e-5 if DEV.type == "cpu" else 1e-4, torch.float16: 2**-10, torch.bfloat16: 2**-7}
FULL = AugmentConfig(hue=0.3, grayscale=0.5, erasing=0.5)


def poisoned(B, S, dtype, channels_last, device="cpu"):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((B, 3, S, S), dtype=dtype, device=device, memory_format=fmt).fill_(float("nan"))


def flags(cfg):
    return dict(jitter=(cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0),
                grayscale=cfg.grayscale > 0, erasing=cfg.erasing > 0)


def check(images, params, S, cfg, dtype, channels_last, **kw):
    images, params = images.to(DEV), params.to(DEV)
    kw = {**flags(cfg), **kw}
    ref = apply_reference(images, params, S, cfg.mean, cfg.std, dtype=dtype, channels_last=channels_last, **kw)
    out = apply_triton(images, params, S, cfg.mean, cfg.std, dtype=dtype, channels_last=channels_last,
                       out=poisoned(len(params), S, dtype, channels_last, images.device), **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    assert not out.isnan().any(), "kernel left elements unwritten"
    atol = position_atol(max(images.shape[1:3]))
    torch.testing.assert_close(out.float(), ref.float(), rtol=RTOL[dtype], atol=atol)


@pytest.mark.parametrize("B,H,W,S", [(1, 16, 16, 8), (3, 37, 53, 17), (4, 24, 40, 32), (2, 20, 20, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_train_matches_reference(B, H, W, S, dtype, channels_last):
    g = torch.Generator().manual_seed(B * 1000 + H)
    images = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=g)
    params = sample_params(FULL, seed=H, epoch=W, sample_ids=torch.arange(B) * 7, in_hw=(H, W), out_size=S)
    check(images, params, S, FULL, dtype, channels_last)


@pytest.mark.parametrize("cfg", [AugmentConfig(brightness=0, saturation=0), AugmentConfig(contrast=0, hue=0.5),
                                 AugmentConfig(brightness=0, contrast=0, saturation=0, erasing=1.0)],
                         ids=["contrast-only", "no-contrast", "erase-only"])
def test_jitter_subsets_match(cfg):
    images = torch.randint(0, 256, (3, 29, 31, 3), dtype=torch.uint8)
    params = sample_params(cfg, seed=5, epoch=1, sample_ids=torch.arange(3), in_hw=(29, 31), out_size=19)
    check(images, params, 19, cfg, torch.float32, False)


def test_eval_matches_reference():
    images = torch.randint(0, 256, (2, 30, 41, 3), dtype=torch.uint8)
    params = eval_params(2, (30, 41), 16, crop_pct=0.875)
    check(images, params, 16, FULL, torch.float32, True, jitter=(False,) * 4, grayscale=False, erasing=False)


def test_float_and_strided_input():
    """A float [0,1] NHWC view with non-contiguous strides reads the same as its copy."""
    nchw = torch.rand(2, 3, 25, 27)
    images = nchw.permute(0, 2, 3, 1)  # NHWC view of NCHW storage
    params = sample_params(FULL, seed=0, epoch=0, sample_ids=torch.arange(2), in_hw=(25, 27), out_size=13)
    check(images, params, 13, FULL, torch.float32, False)


@pytest.mark.gpu
@pytest.mark.skipif(DEV.type != "cuda", reason="needs a CUDA card the engine sends to Triton (sm_80+)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_full_size(dtype):
    images = torch.randint(0, 256, (16, 256, 256, 3), dtype=torch.uint8)
    params = sample_params(FULL, seed=0, epoch=0, sample_ids=torch.arange(16), in_hw=(256, 256), out_size=224)
    check(images, params, 224, FULL, dtype, False)
