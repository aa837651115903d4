"""The reference means what torchvision means: same box, same factors, same fixed order.

Inputs are float images in [0, 1]; torchvision applies resized_crop
(bilinear, antialias=False, which is what we implement), hflip, brightness,
contrast, saturation, hue (in that fixed order; torchvision's ColorJitter
would shuffle it), rgb_to_grayscale(3), normalize, then erase with value 0.
Tolerance ``position_atol(input size)`` absolute on normalised values (~3e-4
here): float32 rounding only; our grid_sample and torchvision's interpolate
each compute the source positions in float32 (see reference.py).
"""
import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as F

from kernels import AugmentConfig, apply_reference, eval_params, sample_params
from kernels.augment.reference import position_atol


def tol(H, W):
    return dict(rtol=0, atol=position_atol(max(H, W)))


def torchvision_one(x, p, b, S, cfg):
    y = F.resized_crop(x, int(p.top[b]), int(p.left[b]), int(p.height[b]), int(p.width[b]), [S, S],
                       interpolation=F.InterpolationMode.BILINEAR, antialias=False)
    if p.flip[b]:
        y = F.hflip(y)
    y = F.adjust_brightness(y, float(p.brightness[b]))
    y = F.adjust_contrast(y, float(p.contrast[b]))
    y = F.adjust_saturation(y, float(p.saturation[b]))
    if cfg.hue > 0:
        y = F.adjust_hue(y, float(p.hue[b]))
    if p.gray[b]:
        y = F.rgb_to_grayscale(y, num_output_channels=3)
    y = F.normalize(y, list(cfg.mean), list(cfg.std))
    if p.erase[b]:
        y = F.erase(y, int(p.erase_top[b]), int(p.erase_left[b]), int(p.erase_h[b]), int(p.erase_w[b]), torch.tensor(0.0))
    return y


@pytest.mark.parametrize("H,W,S", [(37, 53, 17), (64, 48, 32), (20, 20, 40)])
@pytest.mark.parametrize("cfg", [AugmentConfig(hue=0.4, grayscale=0.5, erasing=0.5), AugmentConfig()], ids=["all", "default"])
def test_matches_torchvision(H, W, S, cfg):
    B = 8
    images = torch.rand(B, H, W, 3, generator=torch.Generator().manual_seed(H * W))
    params = sample_params(cfg, seed=3, epoch=2, sample_ids=torch.arange(B) + 100, in_hw=(H, W), out_size=S)
    assert params.flip.any() and not params.flip.all()
    out = apply_reference(images, params, S, cfg.mean, cfg.std, jitter=(True, True, True, cfg.hue > 0))
    for b in range(B):
        torch.testing.assert_close(out[b], torchvision_one(images[b].permute(2, 0, 1), params, b, S, cfg), **tol(H, W))


def test_uint8_input_is_float_input_over_255():
    images = torch.randint(0, 256, (4, 30, 30, 3), dtype=torch.uint8)
    cfg = AugmentConfig(hue=0.1)
    params = sample_params(cfg, seed=0, epoch=0, sample_ids=torch.arange(4), in_hw=(30, 30), out_size=16)
    a = apply_reference(images, params, 16, cfg.mean, cfg.std)
    b = apply_reference(images.float() / 255, params, 16, cfg.mean, cfg.std)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("H,W", [(64, 64), (50, 70), (70, 50)])
def test_eval_is_resize_centre_crop_normalise(H, W):
    S, pct = 24, 0.875
    images = torch.rand(3, H, W, 3)
    out = apply_reference(images, eval_params(3, (H, W), S, pct), S, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3),
                          jitter=(False,) * 4, grayscale=False, erasing=False)
    x = images.permute(0, 3, 1, 2)
    y = F.resize(x, [int(S / pct)], interpolation=F.InterpolationMode.BILINEAR, antialias=False)
    y = F.normalize(F.center_crop(y, [S, S]), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    torch.testing.assert_close(out, y, **tol(H, W))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_dtype_and_layout(dtype, channels_last):
    images = torch.randint(0, 256, (2, 20, 22, 3), dtype=torch.uint8)
    cfg = AugmentConfig()
    params = sample_params(cfg, 0, 0, torch.arange(2), (20, 22), 12)
    out = apply_reference(images, params, 12, cfg.mean, cfg.std, dtype=dtype, channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.dtype == dtype and out.shape == (2, 3, 12, 12) and out.is_contiguous(memory_format=fmt)


def test_compiled_reference_equals_eager():
    """torch.compile of the reference (the CPU fast path) computes the same function."""
    cfg = AugmentConfig(hue=0.1, grayscale=0.5, erasing=0.5)
    images = torch.randint(0, 256, (6, 30, 26, 3), dtype=torch.uint8)
    params = sample_params(cfg, 0, 0, torch.arange(6), (30, 26), 16)
    eager = apply_reference(images, params, 16, cfg.mean, cfg.std)
    compiled = apply_reference(images, params, 16, cfg.mean, cfg.std, compile=True)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_tolerance_catches_a_one_pixel_shift():
    """The stated tolerance is far below what a sampling bug costs: a crop one pixel off fails it."""
    H = W = 64
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0)
    images = torch.rand(8, H, W, 3, generator=torch.Generator().manual_seed(1))
    params = sample_params(cfg, seed=0, epoch=0, sample_ids=torch.arange(8), in_hw=(H, W), out_size=32)
    shifted = dataclasses.replace(params, left=torch.where(params.left > 0, params.left - 1, params.left + 1))
    kw = dict(jitter=(False,) * 4, grayscale=False, erasing=False)
    a = apply_reference(images, params, 32, cfg.mean, cfg.std, **kw)
    b = apply_reference(images, shifted, 32, cfg.mean, cfg.std, **kw)
    assert ((a - b).abs().amax(dim=(1, 2, 3)) > 100 * position_atol(W)).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_reference_matches_cpu(dtype):
    """The reference on a CUDA card (the Pascal/Volta/Turing path) computes what it computes on CPU."""
    cfg = AugmentConfig(hue=0.2, grayscale=0.5, erasing=0.5)
    images = torch.randint(0, 256, (16, 256, 256, 3), dtype=torch.uint8)
    params = sample_params(cfg, seed=3, epoch=0, sample_ids=torch.arange(16), in_hw=(256, 256), out_size=224)
    kw = dict(jitter=(True,) * 4, grayscale=True, erasing=True, dtype=dtype, channels_last=True)
    cpu = apply_reference(images, params, 224, cfg.mean, cfg.std, **kw)
    gpu = apply_reference(images.cuda(), params.to("cuda"), 224, cfg.mean, cfg.std, **kw)
    assert gpu.device.type == "cuda" and gpu.is_contiguous(memory_format=torch.channels_last)
    rtol = 1e-4 if dtype == torch.float32 else 2**-7  # GPU float32 division; one bf16 ulp
    torch.testing.assert_close(gpu.cpu().float(), cpu.float(), rtol=rtol, atol=position_atol(256))
