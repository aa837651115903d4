"""Retrieval (model.task=retrieval) end to end through engine/train.py: under the DeepSpeed launcher on 2 ranks,
killed mid-epoch and resumed (caption draws and the embedding queue are state), evaluated by tools/evaluate.py,
in bf16, with SigLIP's loss and momentum towers, and with CLIP/SigLIP checkpoint folders as the towers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import PY, deepspeed_cmd, module_weights, run_cmd

RETRIEVAL_KEYS = ("val_i2t_r1", "val_i2t_r5", "val_i2t_r10", "val_t2i_r1", "val_t2i_r5", "val_t2i_r10", "val_mean_rank",
                  "val_median_rank")
STAGES = '[{name: warmup, epochs: 1, freeze: [text]}, {name: finetune, epochs: 1}, ' \
         '{name: hard, epochs: 1, overrides: {model.hard_negatives: weighted}}]'


@pytest.fixture(scope="session")
def caption_overrides(tiny_text_encoder, tmp_path_factory) -> list[str]:
    """configs/demo_retrieval.yaml shrunk: 24 train photos with 3 captions each, tiny towers, its cache built."""
    from make_demo_data import make_demo_data

    data = make_demo_data(tmp_path_factory.mktemp("captions"), 24, 12, 12, seed=0, workers=2,
                          sizes=[(96, 72), (80, 80), (72, 96)], captions=3)
    overrides = [f"--data.manifest={data}", "--data.image_size=32", "--model.backbone=test_resnet",
                 f"--model.text_encoder={tiny_text_encoder}", "--model.text_max_length=24", "--model.contrastive_dim=16",
                 "--loader.batch_size=4", "--loader.num_workers=0", "--train.log_every=1", "--run.deterministic=true",
                 "--cache.stored_size=40", f"--cache.dir={tmp_path_factory.mktemp('caption_cache')}",
                 "--model.queue_size=8", "--train.epochs=3", f"--train.stages={STAGES}", "--train.max_steps_per_epoch=2"]
    run_cmd([PY, "tools/build_cache.py", "--config", "configs/demo_retrieval.yaml", *overrides, "--cache.workers=2"])
    return overrides


def train_cmd(overrides: list[str], *extra: str):
    return run_cmd([PY, "engine/train.py", "--config", "configs/demo_retrieval.yaml", *overrides, *extra])


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_rank_retrieval(caption_overrides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("retrieval")
    deepspeed_cmd(2, "engine/train.py", "--config", "configs/demo_retrieval.yaml", *caption_overrides,
                  f"--run.output_dir={out}", "--run.name=full")
    return out / "full"


def test_two_rank_retrieval_run_logs_recall_and_scores_test(two_rank_retrieval):
    recs = records(two_rank_retrieval)
    assert [r["stage"] for r in recs] == ["warmup", "finetune", "hard"]
    for r in recs:
        assert all(0 <= r[k] <= 1 for k in RETRIEVAL_KEYS[:6]) and r["val_mean_rank"] >= 1 and r["val_num_samples"] == 12
    summary = json.loads((two_rank_retrieval / "summary.json").read_text())
    assert summary["best"]["epoch"] and "val_t2i_r5" in summary["best"]
    test = summary["test"]
    assert test["test_num_images"] == 12 and test["test_num_texts"] == 36  # every caption of every test photo
    assert "queue.image" in "".join(module_weights(two_rank_retrieval))  # the queue is part of the checkpoint


def test_evaluate_tool_gives_the_recorded_test_metrics(two_rank_retrieval):
    from tools.evaluate import evaluate_run

    recorded = json.loads((two_rank_retrieval / "summary.json").read_text())["test"]
    for world in (1, 2):
        if world == 1:
            metrics = evaluate_run(two_rank_retrieval, "test", "best", ["--loader.num_workers=0"])
        else:
            deepspeed_cmd(2, "tools/evaluate.py", "--run", str(two_rank_retrieval), "--split", "test")
            metrics = json.loads((two_rank_retrieval / "eval" / "test_best_metrics.json").read_text())
        for key in ("test_i2t_r1", "test_i2t_r5", "test_t2i_r1", "test_t2i_r5", "test_mean_rank", "test_median_rank"):
            assert metrics[key] == pytest.approx(recorded[key], abs=1e-9), (world, key)


def test_two_ranks_resume_mid_epoch_bitwise_with_queue_and_captions(two_rank_retrieval, caption_overrides, tmp_path):
    """Killed at update 3 (inside the second stage) and resumed: the weights, the queue and every epoch's recall equal
    the uninterrupted run's; the caption drawn per photo depends on (seed, epoch, photo) only."""
    args = ["--config", "configs/demo_retrieval.yaml", *caption_overrides, f"--run.output_dir={tmp_path}", "--run.name=cut",
            "--train.checkpoint_every_steps=1"]
    deepspeed_cmd(2, "engine/train.py", *args, "--stop-after-step=3")
    deepspeed_cmd(2, "engine/train.py", *args, "--resume")
    a, b = module_weights(two_rank_retrieval), module_weights(tmp_path / "cut")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not different, different[:5]
    assert [r["val_t2i_r5"] for r in records(tmp_path / "cut")] == [r["val_t2i_r5"] for r in records(two_rank_retrieval)]


def test_bf16_sigmoid_loss_momentum_towers_under_the_launcher(caption_overrides, tmp_path):
    common = ["--config", "configs/demo_retrieval.yaml", *caption_overrides, f"--run.output_dir={tmp_path}", "--run.name=bf16",
              "--train.precision=bf16", "--model.contrastive_loss=sigmoid", "--model.momentum=0.9",
              "--eval.zero_shot_prompt=a {} photo"]
    deepspeed_cmd(1, "engine/train.py", *common, "--train.epochs=1", "--train.stages=[{name: all, epochs: 1}]")
    deepspeed_cmd(1, "engine/train.py", *common, "--train.epochs=2", "--train.stages=[{name: all, epochs: 2}]", "--resume")
    recs = records(tmp_path / "bf16")
    assert [r["epoch"] for r in recs] == [1, 2] and all("val_zeroshot_top1" in r for r in recs)
    config = (tmp_path / "bf16" / "config.yaml").read_text()
    assert "precision: bf16" in config
    w = module_weights(tmp_path / "bf16")
    assert any(k.startswith("momentum_towers.") for k in w) and w["contrastive.logit_bias"].dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_checkpoint_folder_towers_train(family, caption_overrides, tmp_path, request):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    mean, std = ("[0.48145466,0.4578275,0.40821073]", "[0.26862954,0.26130258,0.27577711]") if family == "clip" else \
        ("[0.5,0.5,0.5]", "[0.5,0.5,0.5]")
    train_cmd(caption_overrides, f"--run.output_dir={tmp_path}", f"--run.name={family}", f"--model.backbone={folder}",
              f"--model.text_encoder={folder}", f"--augment.mean={mean}", f"--augment.std={std}", "--train.epochs=1",
              "--train.stages=[{name: all, epochs: 1}]", "--model.contrastive_dim=16" if family == "clip" else
              "--model.contrastive_dim=32", "--model.queue_size=0", "--model.grad_checkpointing=true",
              "--loader.backend=pil")  # the towers' own tokenizer: the PIL loader tokenizes on the fly, no cache to build
    assert records(tmp_path / family)[0]["val_num_samples"] == 12
