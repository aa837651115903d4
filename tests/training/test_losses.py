"""Losses in fp32: CE with label smoothing and class weights, focal, plus the model's auxiliary losses; stage settings."""
import pytest
import torch
import torch.nn.functional as F

from engine.config import load_config
from engine.models.fusion import FusionOutput
from engine.training.losses import classification_loss, training_loss
from engine.training.stages import stage_lr, stage_of


def cfg(**train):
    return load_config(None, {"train": train})


def test_ce_in_fp32_with_smoothing_and_weights():
    logits = torch.randn(6, 3).bfloat16()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = classification_loss(logits, y, cfg(label_smoothing=0.1), w)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(F.cross_entropy(logits.float(), y, weight=w, label_smoothing=0.1).item())


def test_focal_reduces_to_ce_at_gamma_0_and_downweights_easy_samples():
    logits, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    assert (classification_loss(logits, y, cfg(loss="focal", focal_gamma=0.0)).item()
            == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5))
    assert classification_loss(logits, y, cfg(loss="focal", focal_gamma=2.0)) < F.cross_entropy(logits, y)


def test_auxiliary_terms_are_added_and_follow_the_main_heads_rules():
    """Auxiliary heads get the main head's label smoothing, class weights and focal loss (they once got plain CE)."""
    torch.manual_seed(0)
    aux = {"image": torch.randn(4, 3).bfloat16(), "text": torch.randn(4, 3)}
    out, y = FusionOutput(logits=torch.randn(4, 3), aux_logits=aux), torch.tensor([0, 1, 2, 0])
    w = torch.tensor([1.0, 2.0, 0.5])
    for rules in ({}, {"label_smoothing": 0.1}, {"loss": "focal", "focal_gamma": 2.0}):
        c = load_config(None, {"train": rules, "model": {"aux_loss_weight": 0.5}})
        total, parts = training_loss(torch.nn.Identity(), out, y, c, w)
        assert set(parts) == {"cls", "aux_image", "aux_text"} and total.dtype == torch.float32
        for m in aux:
            assert parts[f"aux_{m}"].item() == pytest.approx(0.5 * classification_loss(aux[m], y, c, w).item())
        assert total.item() == pytest.approx(sum(p.item() for p in parts.values()))
    plain = load_config(None, {"model": {"aux_loss_weight": 0.0}})  # weight 0: heads' logits are ignored
    assert set(training_loss(torch.nn.Identity(), out, y, plain)[1]) == {"cls"}


def test_stage_settings():
    c = load_config(None, {"train": {"epochs": 5, "frozen_epochs": 2, "head_lr": 0.01, "finetune_lr": 0.001}})
    assert [stage_of(c, e).name for e in range(5)] == ["frozen", "frozen", "finetune", "finetune", "finetune"]
    frozen, finetune = stage_of(c, 0), stage_of(c, 4)
    assert (stage_lr(c, frozen), stage_lr(c, finetune)) == (0.01, 0.001)
    assert (frozen.epochs, finetune.epochs) == (2, 3) and sorted(frozen.freeze) == ["backbone", "text"] and not finetune.freeze
    plain = load_config(None, {"optim": {"lr": 0.002}})
    assert stage_of(plain, 0).name == "finetune" and stage_lr(plain, stage_of(plain, 0)) == 0.002


def test_weighted_ce_has_one_scale_for_index_and_soft_targets():
    """Turning on mixup (soft targets, even when a batch is not mixed) must not rescale a class-weighted loss."""
    logits = torch.randn(10, 3)
    y = torch.tensor([0] * 9 + [1])
    w = torch.tensor([0.2, 1.8, 1.0])
    hard = classification_loss(logits, y, cfg(), w)
    soft = classification_loss(logits, F.one_hot(y, 3).float(), cfg(), w)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    mixed = F.one_hot(y, 3).float() * 0.7 + F.one_hot(y.flip(0), 3).float() * 0.3
    expected = -(mixed * w * F.log_softmax(logits, 1)).sum() / (mixed * w).sum()
    assert classification_loss(logits, mixed, cfg(), w).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_gradients_stay_finite_on_a_certain_sample():
    """gamma < 1: d(1-p)^gamma/dp is infinite at p = 1; a finite loss must not hide NaN gradients."""
    logits = torch.tensor([[60.0, -60.0, -60.0], [0.1, 0.2, 0.3]], requires_grad=True)  # p = 1.0 exactly in fp32
    loss = classification_loss(logits, torch.tensor([0, 2]), cfg(loss="focal", focal_gamma=0.5))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
