"""train.stages: more than two stages, each with its own frozen parts, learning rate and loss settings."""
from __future__ import annotations

import json

import pytest
import torch

from engine.config import ConfigError, load_config
from engine.training import loop
from engine.training.stages import set_frozen, stage_config, stage_of
from tests.training.test_runs import make_cfg, module_weights

THREE = [{"name": "heads", "epochs": 1, "freeze": ["backbone", "text"], "lr": 0.01},
         {"name": "text_fixed", "epochs": 1, "freeze": ["text"], "lr": 0.002},
         {"name": "all", "epochs": 1, "lr": 0.001, "overrides": {"train.label_smoothing": 0.2}}]


def test_stages_in_order_with_their_settings():
    cfg = load_config(None, {"train": {"epochs": 3, "stages": THREE}})
    assert [stage_of(cfg, e).name for e in range(3)] == ["heads", "text_fixed", "all"]
    assert stage_config(cfg, stage_of(cfg, 2)).train.label_smoothing == 0.2 and cfg.train.label_smoothing == 0.0
    assert stage_config(cfg, stage_of(cfg, 0)) is cfg


@pytest.mark.parametrize("train, match", [
    ({"epochs": 2, "stages": THREE}, "add up to 3 epochs but train.epochs=2"),
    ({"epochs": 3, "stages": [THREE[0], {**THREE[1], "name": "heads"}, THREE[2]]}, "unique"),
    ({"epochs": 1, "stages": [{"name": "a", "freeze": ["encoder"]}]}, r"train.stages\[a\].freeze: unknown part 'encoder'"),
    ({"epochs": 1, "stages": [{"name": "a", "overrides": {"model.backbone": "resnet50"}}]},
     "'model.backbone' cannot change per stage"),
    ({"epochs": 1, "stages": [{"name": "a", "overrides": {"train.label_smoothing": "x"}}]},
     "train.label_smoothing: expected a number"),
    ({"epochs": 1, "stages": [{"name": "a", "epoch": 1}]}, r"unknown key 'train.stages\[0\].epoch'"),
    ({"epochs": 2, "frozen_epochs": 1, "stages": [{"name": "a", "epochs": 2}]}, "replaces train.frozen_epochs"),
])
def test_bad_stages_are_refused_by_key(train, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, {"train": train})


def test_set_frozen_by_part(tiny_overrides):
    from engine.models import create_model

    cfg = load_config("configs/demo.yaml", tiny_overrides)
    model = create_model(cfg.model, 4, 1, [3])
    set_frozen(model, ["text"])
    assert all(not p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.image.parameters()) and all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert all(m.training for m in model.image.modules())  # the backbone trains, BatchNorm statistics included
    set_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_three_stage_run_trains_what_each_stage_says(tiny_overrides, tmp_path, monkeypatch):
    snapshots = []
    real = loop.train_epoch

    def spy(engine, loader, ctx, *args, **kwargs):
        before = {k: v.clone() for k, v in engine.module.state_dict().items()}
        out = real(engine, loader, ctx, *args, **kwargs)
        cfg = ctx.step.cfg  # the stage's config, as the epoch trained under it
        lrs = [g["lr"] for g in engine.optimizer.param_groups]
        snapshots.append((before, {k: v.clone() for k, v in engine.module.state_dict().items()}, cfg.train.label_smoothing, lrs))
        return out

    monkeypatch.setattr(loop, "train_epoch", spy)
    cfg = make_cfg(tiny_overrides, tmp_path, "three", "--train.epochs=3", "--optim.schedule=constant",
                   f"--train.stages={json.dumps(THREE)}")
    loop.train(cfg)
    moved = lambda b, a, prefix: any(not torch.equal(b[k], a[k]) for k in a if k.startswith(prefix))  # noqa: E731
    (b1, a1, s1, lr1), (b2, a2, s2, lr2), (b3, a3, s3, lr3) = snapshots
    assert not moved(b1, a1, "image.") and not moved(b1, a1, "text.") and moved(b1, a1, "head.")
    assert moved(b2, a2, "image.") and not moved(b2, a2, "text.")
    assert moved(b3, a3, "image.") and moved(b3, a3, "text.")
    assert (s1, s2, s3) == (0.0, 0.0, 0.2)  # the last stage's loss setting reached the step, and only there
    assert max(lr1) == pytest.approx(0.01) and max(lr2) == pytest.approx(0.002) and max(lr3) == pytest.approx(0.001)
    recs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in recs] == ["heads", "text_fixed", "all"]


def test_resume_in_a_middle_stage_equals_uninterrupted(tiny_overrides, tmp_path):
    common = ["--train.epochs=3", f"--train.stages={json.dumps(THREE)}", "--model.dropout=0.2"]
    full = make_cfg(tiny_overrides, tmp_path, "full", *common)
    loop.train(full)
    cut = make_cfg(tiny_overrides, tmp_path, "cut", *common)
    assert "preempted" in loop.train(cut, stop_after_epoch=2)  # killed after the second stage's epoch
    loop.train(cut, resume=True)
    a, b = module_weights(full.run_dir), module_weights(cut.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
