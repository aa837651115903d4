"""In-process training runs on the tiny dataset: staged finetuning, exact resume, the NaN guard, best checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from engine.training import loop
from engine.training.checkpoint import peek_state
from tests.training.conftest import module_weights  # noqa: F401  (test_stages imports it from here too)


def make_cfg(tiny_overrides, out: Path, name: str, *extra: str):
    return load_config("configs/demo.yaml", [*tiny_overrides, f"--run.output_dir={out}", f"--run.name={name}", *extra])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_staged_training_freezes_then_unfreezes(tiny_overrides, tmp_path, monkeypatch):
    snapshots = []
    real = loop.train_epoch

    def spy(engine, *args, **kwargs):
        before = {k: v.clone() for k, v in engine.module.state_dict().items()}
        trainable = {n for n, p in engine.module.named_parameters() if p.requires_grad}
        out = real(engine, *args, **kwargs)
        snapshots.append((before, {k: v.clone() for k, v in engine.module.state_dict().items()}, trainable))
        return out

    monkeypatch.setattr(loop, "train_epoch", spy)
    cfg = make_cfg(tiny_overrides, tmp_path, "staged", "--train.epochs=2", "--train.frozen_epochs=1",
                   "--train.head_lr=0.01", "--train.finetune_lr=0.001")
    loop.train(cfg)
    (b1, a1, t1), (b2, a2, t2) = snapshots
    encoder = [k for k in a1 if k.startswith(("image.", "text."))]
    assert any("running_mean" in k for k in encoder)  # BatchNorm statistics are part of what must stay fixed
    assert all(torch.equal(b1[k], a1[k]) for k in encoder), "stage 1 moved the frozen encoders"
    assert not torch.equal(b1["head.1.weight"], a1["head.1.weight"]), "stage 1 did not train the head"
    assert not any(n.startswith(("image.", "text.")) for n in t1)
    assert any(n.startswith("image.") for n in t2) and any(n.startswith("text.") for n in t2)
    for prefix in ("image.", "text."):
        assert any(not torch.equal(b2[k], a2[k]) for k in encoder if k.startswith(prefix)), f"stage 2 did not train {prefix}"
    stages = [r["stage"] for r in records(cfg.run_dir)]
    assert stages == ["frozen", "finetune"]


@pytest.mark.parametrize("backend", ["cache", "pil"])
def test_resume_equals_uninterrupted(tiny_overrides, tmp_path, backend):
    """A kill after an epoch (in the frozen stage) and a kill mid-epoch both resume to bitwise the same weights."""
    common = ["--train.epochs=3", "--train.frozen_epochs=1", "--train.checkpoint_every_steps=1", "--model.dropout=0.2",
              f"--loader.backend={backend}"]
    full = make_cfg(tiny_overrides, tmp_path, "full", *common)
    summary = loop.train(full)
    reference = module_weights(full.run_dir)

    after_epoch = make_cfg(tiny_overrides, tmp_path, "after_epoch", *common)
    assert "preempted" in loop.train(after_epoch, stop_after_epoch=1)
    assert peek_state(after_epoch.run_dir / "checkpoints", "last").stage == "frozen"
    loop.train(after_epoch, resume=True)

    mid_epoch = make_cfg(tiny_overrides, tmp_path, "mid_epoch", *common)
    loop.train(mid_epoch, stop_after_step=5)  # 2 updates per epoch: step 5 is inside epoch 3
    state = peek_state(mid_epoch.run_dir / "checkpoints", "last")
    assert (state.epoch, state.global_step) == (2, 5)
    resumed = loop.train(mid_epoch, resume=True)

    for run in (after_epoch, mid_epoch):
        weights = module_weights(run.run_dir)
        assert weights.keys() == reference.keys()
        different = [k for k in reference if not torch.equal(reference[k], weights[k])]
        assert not different, f"{run.run.name}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert resumed["state"] == summary["state"]
    assert [r["val_loss"] for r in records(after_epoch.run_dir)] == [r["val_loss"] for r in records(full.run_dir)]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    from engine.training import step
    from engine.training.losses import training_loss

    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, parts = training_loss(*args, **kwargs)
        return (loss * float("nan"), parts) if calls["n"] == 4 else (loss, parts)  # 2nd batch of epoch 2

    monkeypatch.setattr(step, "training_loss", poisoned)
    cfg = make_cfg(tiny_overrides, tmp_path, "nan", "--train.epochs=3")
    with pytest.raises(loop.NonFiniteLoss, match=r"epoch 2, step 3, batch 1 \(manifest rows"):
        loop.train(cfg)
    state = peek_state(cfg.run_dir / "checkpoints", "last")
    assert (state.epoch, state.global_step) == (1, 2)
    weights = module_weights(cfg.run_dir)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    monkeypatch.setattr(step, "training_loss", training_loss)
    summary = loop.train(cfg, resume=True)  # the intact checkpoint loads and training goes on
    assert summary["epochs"] == 3


def test_best_checkpoint_and_early_stopping(tiny_overrides, tmp_path):
    """'best' holds the epoch that is best by eval.metric; patience stops the run."""
    from tools.evaluate import evaluate_run

    cfg = make_cfg(tiny_overrides, tmp_path, "best", "--train.epochs=4", "--eval.metric=val_auc_macro",
                   "--train.early_stopping_patience=2", "--optim.lr=0.003")
    summary = loop.train(cfg)
    recs = records(cfg.run_dir)
    values = [r["val_auc_macro"] for r in recs]
    best_epoch = max(range(len(values)), key=lambda i: (values[i], -i)) + 1
    assert summary["best"]["epoch"] == best_epoch == peek_state(cfg.run_dir / "checkpoints", "best").epoch
    assert summary["best"]["val_auc_macro"] == max(values)
    assert len(recs) == 4 or len(recs) - best_epoch == 2  # either ran out of epochs or patience ran out
    metrics = evaluate_run(cfg.run_dir, "val", "best")
    assert metrics["val_auc_macro"] == pytest.approx(max(values), abs=1e-9)
    assert metrics["val_loss"] == pytest.approx(recs[best_epoch - 1]["val_loss"], rel=1e-6)


@pytest.mark.parametrize("extra", [
    ["--train.grad_accum=2", "--loader.balanced_sampling=inverse", "--augment.mixup_alpha=0.4", "--augment.cutmix_alpha=1.0"],
    ["--loader.backend=pil", "--loader.num_workers=2"],
    ["--loader.order=block", "--loader.block_size=4", "--loader.shuffle_window=2", "--loader.balanced_sampling=sqrt"],
], ids=["accum-balanced-mix", "pil-workers", "block-order-balanced"])
def test_resume_mid_epoch_exact_with_more_state(tiny_overrides, tmp_path, extra):
    """Mid-epoch resume stays bitwise with gradient accumulation, a weighted sampler, mixup/cutmix draws,
    DataLoader worker processes and a block-shuffled order: each is state that a resume could restart in the wrong
    place."""
    common = ["--train.epochs=2", "--train.checkpoint_every_steps=1", "--model.dropout=0.2", *extra]
    full = make_cfg(tiny_overrides, tmp_path, "full", *common)
    loop.train(full)
    killed = make_cfg(tiny_overrides, tmp_path, "killed", *common)
    loop.train(killed, stop_after_step=3)  # 2 updates per epoch: inside epoch 2
    loop.train(killed, resume=True)
    reference, resumed = module_weights(full.run_dir), module_weights(killed.run_dir)
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert [r["val_loss"] for r in records(killed.run_dir)] == [r["val_loss"] for r in records(full.run_dir)]


def test_resuming_a_run_that_stopped_early_trains_no_further(tiny_overrides, tmp_path):
    cfg = make_cfg(tiny_overrides, tmp_path, "stopped", "--train.epochs=5", "--train.early_stopping_patience=1",
                   "--optim.lr=1e-12", "--eval.metric=val_top1")  # top-1 cannot improve after epoch 1
    loop.train(cfg)
    assert [r["epoch"] for r in records(cfg.run_dir)] == [1, 2]
    loop.train(cfg, resume=True)
    assert [r["epoch"] for r in records(cfg.run_dir)] == [1, 2]
