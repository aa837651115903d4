"""Mixup / CutMix: soft labels, area-correct lambda, identity when disabled."""
import pytest
import torch

from kernels import AugmentConfig, mix, mix_decision


def batch(B=6, S=20):
    # image i is constant i, so every output pixel says which sample it came from
    images = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, S, S).contiguous()
    return images, torch.tensor([0, 1, 2, 3, 4, 0])[:B]


def test_disabled_is_identity():
    x, y = batch()
    out, soft = mix(x, y, 5, AugmentConfig(), step_seed=1)
    assert torch.equal(out, x)
    assert torch.equal(soft, torch.nn.functional.one_hot(y, 5).float())


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_lambda_is_pasted_area(seed):
    cfg = AugmentConfig(cutmix_alpha=1.0)
    x, y = batch()
    out, soft = mix(x, y, 5, cfg, seed)
    d = mix_decision(cfg, seed, (20, 20))
    assert d.kind == "cutmix"
    kept = (out == x).all(1).float().mean(dim=(1, 2))  # per sample, fraction of own pixels (x != x.flip(0) here)
    torch.testing.assert_close(kept, torch.full((6,), d.lam))
    assert torch.allclose(soft.sum(1), torch.ones(6))
    assert soft.dtype == torch.float32 and soft.shape == (6, 5)
    expected = d.lam * torch.nn.functional.one_hot(y, 5) + (1 - d.lam) * torch.nn.functional.one_hot(y.flip(0), 5)
    torch.testing.assert_close(soft, expected.float())


def test_mixup_blends_images_and_labels():
    cfg = AugmentConfig(mixup_alpha=0.4)
    x, y = batch()
    out, soft = mix(x, y, 5, cfg, 3)
    d = mix_decision(cfg, 3, (20, 20))
    assert d.kind == "mixup"
    torch.testing.assert_close(out, d.lam * x + (1 - d.lam) * x.flip(0))
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_both_alphas_switch_and_mix_prob():
    cfg = AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0)
    kinds = {mix_decision(cfg, s, (8, 8)).kind for s in range(40)}
    assert kinds == {"mixup", "cutmix"}
    never = AugmentConfig(mixup_alpha=0.8, mix_prob=0.0)
    assert {mix_decision(never, s, (8, 8)).kind for s in range(20)} == {"none"}
    assert mix_decision(cfg, 5, (8, 8)) == mix_decision(cfg, 5, (8, 8))  # seeded
