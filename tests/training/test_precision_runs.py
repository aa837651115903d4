"""bf16 end to end through the command lines: `python engine/train.py` per backbone family, and one run under the
DeepSpeed launcher killed after an epoch, resumed (bitwise equal to an uninterrupted run), and evaluated with
tools/evaluate.py.

DeepSpeed's bf16 engine on the CPU accelerator is the same engine code as on an sm_80+ card (it casts the
parameters, keeps the buffers; see engine.training.wrap.batchnorm_in_fp32), so these runs stand for the GPU's.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import deepspeed_cmd, module_weights, train_cmd

BF16 = ["--train.precision=bf16", "--run.deterministic=true"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith(("_s", "_frac"))} for r in recs]


def saved_module(run: Path, tag: str) -> dict[str, torch.Tensor]:
    return module_weights(run, tag)


def check_bf16_run(run: Path, epochs: int) -> None:
    cfg = (run / "config.yaml").read_text()
    assert "precision: bf16" in cfg
    recs = records(run)
    assert [r["epoch"] for r in recs] == list(range(1, epochs + 1))
    assert all(torch.isfinite(torch.tensor([r["train_loss"], r["val_loss"]])).all() for r in recs)
    module = saved_module(run, "last")
    assert {v.dtype for k, v in module.items() if v.is_floating_point() and "running_" not in k} == {torch.bfloat16}
    for k, v in module.items():  # BatchNorm statistics stay fp32 (and were updated)
        if "running_" in k:
            assert v.dtype == torch.float32, k
    if any("running_var" in k for k in module):
        assert not all(torch.equal(v, torch.ones_like(v)) for k, v in module.items() if k.endswith("running_var"))


@pytest.fixture(scope="module")
def bf16_reference(tiny_overrides, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch bf16 run, one process: the family check for BatchNorm2d and the resume reference."""
    out = tmp_path_factory.mktemp("bf16")
    train_cmd(tiny_overrides, *BF16, f"--run.output_dir={out}", "--run.name=reference", "--train.epochs=2")
    return out / "reference"


# timm's test_* nets: the registry families' modules (BatchNormAct2d, ConvNeXt V2's LayerNorm2d + GRN, ViT's
# LayerNorm + attention) at a few hundred thousand parameters; test_vit has a fixed 160 px position embedding.
@pytest.mark.parametrize("backbone,size", [("test_efficientnet", 32), ("test_convnext2", 32), ("test_vit", 160)])
def test_bf16_trains_each_backbone_family(tiny_overrides, tmp_path, backbone, size):
    train_cmd(tiny_overrides, *BF16, f"--run.output_dir={tmp_path}", "--run.name=run", "--train.epochs=1",
              f"--model.backbone={backbone}", f"--data.image_size={size}")
    check_bf16_run(tmp_path / "run", 1)


def test_bf16_under_launcher_resumes_exactly_and_evaluates(tiny_overrides, bf16_reference, tmp_path):
    check_bf16_run(bf16_reference, 2)
    args = ["engine/train.py", "--config", "configs/demo.yaml", *tiny_overrides, *BF16, f"--run.output_dir={tmp_path}",
            "--run.name=resumed", "--train.epochs=2"]
    deepspeed_cmd(1, *args, "--stop-after-epoch=1")
    deepspeed_cmd(1, *args, "--resume")
    run = tmp_path / "resumed"
    check_bf16_run(run, 2)
    assert untimed(records(run)) == untimed(records(bf16_reference))  # losses and metrics, bitwise
    ref, got = saved_module(bf16_reference, "last"), saved_module(run, "last")
    assert all(torch.equal(ref[k], got[k]) for k in ref), "bf16 resume differs from the uninterrupted run"

    from tools.evaluate import evaluate_run

    metrics = evaluate_run(run, "val", "last", ["--loader.num_workers=0"])  # builds the bf16 engine again
    last = records(run)[-1]
    for key in ("val_loss", "val_top1", "val_auc_macro"):
        assert metrics[key] == pytest.approx(last[key], rel=1e-5, abs=1e-7), key
