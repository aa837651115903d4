"""Per-sample params are a pure function of (seed, epoch, sample_id)."""
import dataclasses

import torch

from kernels import AugmentConfig, Augmenter, sample_params

CFG = AugmentConfig(hue=0.2, grayscale=0.2, erasing=0.5)


def images(B=6, H=40, W=36):
    return torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_output_new_epoch_differs():
    x, ids = images(), torch.arange(6) + 1000
    a = Augmenter(CFG, 24, seed=7, impl="reference").train(x, ids, epoch=3)
    b = Augmenter(CFG, 24, seed=7, impl="reference").train(x, ids, epoch=3)
    assert torch.equal(a, b)
    c = Augmenter(CFG, 24, seed=7, impl="reference").train(x, ids, epoch=4)
    d = Augmenter(CFG, 24, seed=8, impl="reference").train(x, ids, epoch=3)
    for other in (c, d):
        assert all(not torch.equal(a[i], other[i]) for i in range(6))


def test_batch_split_is_invariant():
    """What two ranks with half a batch each produce equals the whole batch (world-size invariance)."""
    x, ids = images(), torch.tensor([5, 99, 3, 1234567, 42, 0])
    aug = Augmenter(CFG, 24, seed=1, impl="reference")
    whole = aug.train(x, ids, epoch=0)
    halves = torch.cat([aug.train(x[:2], ids[:2], 0), aug.train(x[2:], ids[2:], 0)])
    assert torch.equal(whole, halves)
    shuffled = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(aug.train(x[shuffled], ids[shuffled], 0), whole[shuffled])


def test_params_in_range():
    H, W, S, n = 50, 30, 16, 4000
    p = sample_params(CFG, seed=0, epoch=0, sample_ids=torch.arange(n), in_hw=(H, W), out_size=S)
    assert ((p.top >= 0) & (p.top + p.height <= H) & (p.height > 0)).all()
    assert ((p.left >= 0) & (p.left + p.width <= W) & (p.width > 0)).all()
    area = (p.height * p.width).double() / (H * W)
    assert area.min() >= 0.07 and area.max() <= 1.0
    for f, s in ((p.brightness, CFG.brightness), (p.contrast, CFG.contrast), (p.saturation, CFG.saturation)):
        assert f.min() >= 1 - s and f.max() <= 1 + s and f.std() > 0.1
    assert p.hue.abs().max() <= CFG.hue
    assert abs(p.flip.float().mean() - CFG.hflip) < 0.05
    assert abs(p.gray.float().mean() - CFG.grayscale) < 0.05
    e = p.erase
    assert abs(e.float().mean() - CFG.erasing) < 0.05
    assert ((p.erase_top[e] + p.erase_h[e] <= S) & (p.erase_left[e] + p.erase_w[e] <= S)).all()


def test_disabled_ops_are_identity_params():
    cfg = AugmentConfig(hflip=0, brightness=0, contrast=0, saturation=0, hue=0, grayscale=0, erasing=0)
    p = sample_params(cfg, 0, 0, torch.arange(100), (32, 32), 16)
    assert not p.flip.any() and not p.gray.any() and not p.erase.any()
    for name in ("brightness", "contrast", "saturation"):
        assert (getattr(p, name) == 1).all(), name
    assert (p.hue == 0).all()


def test_params_select_and_fields_are_per_sample():
    p = sample_params(CFG, 0, 0, torch.arange(10), (32, 32), 16)
    q = sample_params(CFG, 0, 0, torch.arange(10)[3:5], (32, 32), 16)
    for f in dataclasses.fields(p):
        assert torch.equal(getattr(p.select(slice(3, 5)), f.name), getattr(q, f.name)), f.name
