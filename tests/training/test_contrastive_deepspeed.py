"""Contrastive models under DeepSpeed: the learnable temperature (and SigLIP bias) survive deepspeed.initialize.

DeepSpeed broadcasts every parameter viewed as bytes when it wraps a model; a 0-dim logit scale failed there
("self.dim() cannot be 0 to view Float as Byte"), so `--model.contrastive_weight=0.5` could not start.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from engine.config import load_config
from engine.data.batch import Batch
from engine.training.step import DevicePipe, StepContext, train_step
from tests.training.conftest import deepspeed_cmd


@pytest.mark.parametrize("model_cfg", [
    {"contrastive_weight": 0.5},
    {"contrastive_weight": 0.5, "contrastive_loss": "sigmoid"},
    {"task": "retrieval", "contrastive_loss": "sigmoid", "queue_size": 8, "momentum": 0.9, "use_tabular": False},
])
def test_contrastive_models_wrap_and_train_step(tiny_text_encoder, model_cfg):
    from engine.models import create_model
    from engine.training.distributed import init_distributed
    from engine.training.wrap import wrap_model

    dist = init_distributed()
    sections = {"loader": {"batch_size": 4}, "model": {"backbone": "test_resnet", "text_encoder": tiny_text_encoder,
                                                        "text_max_length": 8, "fusion_dim": 16, **model_cfg}}
    if model_cfg.get("task") == "retrieval":
        sections["eval"] = {"metric": "val_rsum"}
    cfg = load_config(None, sections)
    torch.manual_seed(0)
    model = create_model(cfg.model, 3, 2, [3])
    engine, _, _ = wrap_model(model, cfg, dist.device, "fp32", dist.world, total_steps=4, base_lr=0.1)
    scale_before = model.contrastive.logit_scale.detach().clone()
    batch = Batch(images=torch.randn(4, 3, 32, 32), input_ids=torch.randint(1000, 2000, (4, 8)),
                  attention_mask=torch.ones(4, 8, dtype=torch.long), numeric=torch.randn(4, 2),
                  categorical=torch.zeros(4, 1, dtype=torch.long), labels=torch.tensor([0, 1, 2, 0]),
                  index=torch.arange(4))
    ctx = StepContext(DevicePipe.for_device(cfg, dist.device, "fp32"), cfg, num_classes=3)
    result = train_step(engine, batch, ctx, epoch=0, i=0)  # the loop's micro-step, alone
    assert result.boundary and result.size == 4 and math.isfinite(result.loss)
    expected = {"contrastive"} if cfg.model.task == "retrieval" else {"cls", "contrastive"}
    assert set(result.parts) == expected
    assert not torch.equal(scale_before, engine.module.contrastive.logit_scale.detach())


def test_contrastive_demo_trains_under_the_deepspeed_launcher(tiny_overrides, tmp_path):
    """`deepspeed --num_gpus 2 engine/train.py --model.contrastive_weight=0.5` with auxiliary heads, one epoch of 2 steps."""
    deepspeed_cmd(2, "engine/train.py", "--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={tmp_path}",
                  "--run.name=contrastive", "--train.epochs=1", "--model.contrastive_weight=0.5",
                  "--model.aux_loss_weight=0.3", "--train.label_smoothing=0.1")  # auxiliary heads under the main rules
    records = [json.loads(line) for line in (tmp_path / "contrastive" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["train_loss"] > 0
