"""Pieces of the loop tested alone: mixing on every backend, metrics on partial splits, best tracking, the save guard."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.data.batch import Batch
from engine.training.checkpoint import TrainState
from engine.training.loop import NonFiniteLoss, _refuse_non_finite_weights, _track_best
from engine.training.metrics import classification_metrics
from engine.training.step import DevicePipe


def _float_batch(b: int = 4) -> Batch:
    """What the pil / dali backends emit: float NCHW images, already augmented."""
    return Batch(images=torch.rand(b, 3, 8, 8), input_ids=torch.zeros(b, 4, dtype=torch.long),
                 attention_mask=torch.ones(b, 4, dtype=torch.long), numeric=torch.rand(b, 1),
                 categorical=torch.zeros(b, 1, dtype=torch.long), labels=torch.arange(b) % 3, index=torch.arange(b))


def test_mixup_applies_to_float_batches_and_draws_per_rank_and_batch():
    cfg = load_config(None, {"augment": {"mixup_alpha": 0.4}})
    pipe = DevicePipe(cfg, torch.device("cpu"), torch.float32, channels_last=False)
    batch = _float_batch()
    inputs, targets, _ = pipe(batch, True, 0, 3, step_seed=(0, 0, 0, 1))
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(1), torch.ones(4))
    assert not torch.equal(inputs["images"], batch.images)  # mixed, not passed through
    _, t_rank1, _ = pipe(batch, True, 0, 3, step_seed=(0, 1, 0, 1))
    assert not torch.equal(targets, t_rank1)  # another rank draws another lambda
    _, evaluated, _ = pipe(batch, False, 0, 3)
    assert evaluated.dtype == torch.long  # never mixed in evaluation


def test_macro_metrics_over_the_classes_present():
    probs = np.array([[0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05], [0.7, 0.2, 0.05, 0.05], [0.2, 0.7, 0.05, 0.05]])
    m = classification_metrics(probs, np.array([0, 1, 0, 1]), ["a", "b", "c", "d"])  # c and d absent from the split
    assert m["top1"] == 1.0 and m["f1_macro"] == 1.0 and m["auc_macro"] == 1.0 and m["classes_evaluated"] == 2
    assert m["per_class"]["c"]["support"] == 0
    assert math.isnan(classification_metrics(probs[:2], np.array([0, 0]), ["a", "b", "c", "d"])["auc_macro"])


def test_nan_metric_is_not_an_improvement(caplog):
    cfg = load_config(None, {"eval": {"metric": "val_auc_macro"}})
    state = TrainState()
    assert _track_best(cfg, state, {"val_auc_macro": 0.6}) and state.best_metric == 0.6
    with caplog.at_level("WARNING"):
        assert not _track_best(cfg, state, {"val_auc_macro": float("nan")})
    assert state.best_metric == 0.6 and state.bad_epochs == 1 and "NaN" in caplog.text
    assert _track_best(cfg, state, {"val_auc_macro": 0.7}) and state.bad_epochs == 0


def test_non_finite_weights_are_never_saved():
    model = torch.nn.Linear(2, 2)
    _refuse_non_finite_weights(model, TrainState())
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="non-finite weights .* last good checkpoint kept"):
        _refuse_non_finite_weights(model, TrainState(global_step=3))
