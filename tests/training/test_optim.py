"""Optimizers, parameter groups (weight-decay exclusions, per-module LRs, layer decay), schedules, class weights."""
import math

import pytest
import torch
from torch import nn

from engine.config import ConfigError, load_config
from engine.training.optim import create_optimizer, loss_class_weights, lr_lambda, param_groups


class Toy(nn.Module):
    """Shaped like FusionModel: image / text branches and a head (no param_groups(): the fallback path)."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.text = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
        self.head = nn.Linear(8, 2)


class ToyWithGroups(Toy):
    """Provides the model's param_groups() contract: name, params, lr_scale, layer_id, num_layers, no_weight_decay."""

    def param_groups(self):
        return [
            {"name": "backbone", "params": [self.image[0].weight], "lr_scale": 1.0, "layer_id": 0, "num_layers": 2,
             "no_weight_decay": False},
            {"name": "backbone", "params": list(self.image[1].parameters()) + [self.image[0].bias], "lr_scale": 1.0,
             "layer_id": 1, "num_layers": 2, "no_weight_decay": True},
            {"name": "text", "params": list(self.text.parameters()), "lr_scale": 1.0, "layer_id": None, "num_layers": 1,
             "no_weight_decay": True},
            {"name": "head", "params": [self.head.weight], "lr_scale": 1.0, "layer_id": None, "num_layers": 1,
             "no_weight_decay": False},
            {"name": "head", "params": [self.head.bias], "lr_scale": 1.0, "layer_id": None, "num_layers": 1,
             "no_weight_decay": True},
        ]


def _lr_of(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_no_decay_for_norms_biases_embeddings():
    m = Toy()
    groups = param_groups(m, load_config(None).optim, 1e-3)
    assert _lr_of(groups, m.image[0].weight)["weight_decay"] > 0 and _lr_of(groups, m.head.weight)["weight_decay"] > 0
    for p in (m.image[0].bias, m.image[1].weight, m.text[0].weight, m.text[1].weight, m.head.bias):
        assert _lr_of(groups, p)["weight_decay"] == 0
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


@pytest.mark.parametrize("model_cls", [Toy, ToyWithGroups])
def test_per_module_lr_scales(model_cls):
    m = model_cls()
    cfg = load_config(None, {"optim": {"backbone_lr_scale": 0.1, "text_lr_scale": 0.01}}).optim
    groups = param_groups(m, cfg, 1.0)
    assert _lr_of(groups, m.head.weight)["lr"] == pytest.approx(1.0)
    assert _lr_of(groups, m.text[1].weight)["lr"] == pytest.approx(0.01)
    assert _lr_of(groups, m.image[1].weight)["lr"] == pytest.approx(0.1)


def test_layer_decay_from_model_groups():
    m = ToyWithGroups()
    cfg = load_config(None, {"optim": {"layer_decay": 0.5}}).optim
    groups = param_groups(m, cfg, 1.0)
    assert _lr_of(groups, m.image[0].weight)["lr"] == pytest.approx(0.5)  # input side: decayed once
    assert _lr_of(groups, m.image[1].weight)["lr"] == pytest.approx(1.0)  # output side: full lr
    assert _lr_of(groups, m.head.weight)["lr"] == pytest.approx(1.0)  # no depth: untouched


def test_frozen_parameters_left_out():
    m = Toy()
    m.image.requires_grad_(False)
    groups = param_groups(m, load_config(None).optim, 1e-3)
    ids = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in ids for p in m.image.parameters())


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers(name, cls):
    opt = create_optimizer(Toy(), load_config(None, {"optim": {"name": name}}).optim, 1e-3, torch.device("cpu"))
    assert isinstance(opt, cls)


def test_warmup_then_cosine():
    cfg = load_config(None, {"optim": {"warmup_steps": 4, "schedule": "cosine", "min_lr_ratio": 0.1}}).optim
    f = lr_lambda(cfg, 20)
    assert [f(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(20) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_linear_and_constant():
    one = lr_lambda(load_config(None, {"optim": {"warmup_steps": 2, "schedule": "linear"}}).optim, 10)
    assert one(0) < one(1) < one(2) == pytest.approx(1.0) and one(10) == pytest.approx(0.0)
    const = lr_lambda(load_config(None, {"optim": {"schedule": "constant"}}).optim, 10)
    assert {const(s) for s in range(12)} == {1.0}


@pytest.mark.parametrize("total,pct,div,final", [(100, 0.3, 25.0, 1e4), (7, 0.25, 10.0, 100.0), (4, 0.5, 25.0, 1e4)])
def test_onecycle_is_torchs_onecyclelr(total, pct, div, final):
    """optim.schedule=onecycle follows torch's OneCycleLR (cosine, two phases) update by update."""
    cfg = load_config(None, {"optim": {"schedule": "onecycle", "lr": 0.1, "pct_start": pct, "div_factor": div,
                                       "final_div_factor": final}}).optim
    f = lr_lambda(cfg, total)
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=pct, div_factor=div,
                                              final_div_factor=final, cycle_momentum=False)
    got, want = [], []
    for step in range(total):
        want.append(opt.param_groups[0]["lr"])
        got.append(0.1 * f(step))
        opt.step()
        ref.step() if step < total - 1 else None  # OneCycleLR refuses to step past total_steps
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_onecycle_refuses_warmup_steps():
    with pytest.raises(ConfigError, match="optim.warmup_steps.*onecycle"):
        load_config(None, {"optim": {"schedule": "onecycle", "warmup_steps": 5}})


def test_schedule_steps_per_optimizer_update_not_per_micro_batch():
    """With grad_accum=2, DeepSpeed steps the scheduler once per 2 micro batches."""
    from engine.training.distributed import init_distributed
    from engine.training.wrap import wrap_model

    dist = init_distributed()
    cfg = load_config(None, {"train": {"grad_accum": 2}, "loader": {"batch_size": 2},
                             "optim": {"schedule": "linear", "warmup_steps": 0}})
    engine, _, sched = wrap_model(nn.Linear(3, 2), cfg, dist.device, "fp32", dist.world, total_steps=4, base_lr=1.0)
    lrs = []
    for _ in range(4):
        engine.backward(engine(torch.randn(2, 3)).sum())
        engine.step()
        lrs.append(engine.get_lr()[0])
    assert lrs == pytest.approx([1.0, 0.75, 0.75, 0.5])


def test_class_weights():
    labels = [0, 0, 0, 1]
    assert loss_class_weights(labels, 2, "none") is None
    inv = loss_class_weights(labels, 2, "inverse")
    assert inv.mean().item() == pytest.approx(1.0) and inv[1] / inv[0] == pytest.approx(3.0)
    sqrt = loss_class_weights(labels, 2, "sqrt")
    assert sqrt[1] / sqrt[0] == pytest.approx(math.sqrt(3.0))


def test_accumulation_boundary_is_asked_before_step():
    """train_epoch counts an optimizer update when is_gradient_accumulation_boundary() holds *before* step()."""
    from engine.training.distributed import init_distributed
    from engine.training.wrap import wrap_model

    dist = init_distributed()
    cfg = load_config(None, {"train": {"grad_accum": 2}, "loader": {"batch_size": 2}})
    engine, _, _ = wrap_model(nn.Linear(3, 2), cfg, dist.device, "fp32", dist.world, total_steps=4, base_lr=1.0)
    for _ in range(4):
        before = engine.module.weight.detach().clone()
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(engine(torch.randn(2, 3)).sum())
        engine.step()
        assert boundary == (not torch.equal(before, engine.module.weight))
