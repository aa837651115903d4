"""Runs through the command lines: `deepspeed --num_gpus 2 engine/train.py`, `tools/evaluate.py` on 1-3 ranks.

One two-rank training run (module-scoped) feeds every assertion here; each
subprocess costs 20-40 s on a busy 2-core machine.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.training.conftest import PY, deepspeed_cmd, module_weights, run_cmd

SCALARS = ("val_loss", "val_top1", "val_top3", "val_auc_macro", "val_f1_macro", "val_num_samples")


@pytest.fixture(scope="module")
def two_rank_run(tiny_overrides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("launcher")
    p = deepspeed_cmd(2, "engine/train.py", "--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={out}",
                      "--run.name=two_ranks", "--train.epochs=4", "--optim.lr=0.003", "--eval.test=true",
                      "--loader.batch_size=4", "--train.max_steps_per_epoch=4")
    (out / "console.txt").write_text(p.stdout)  # what the user saw (the launcher forwards both ranks' stdout)
    return out / "two_ranks"


def read_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contents(two_rank_run):
    cfg = yaml.safe_load((two_rank_run / "config.yaml").read_text())
    prov = cfg["provenance"]
    assert prov["world_size"] == 2 and prov["seed"] == 0 and len(prov["dataset_version"]) == 64
    assert "max_train_samples" in prov["subset"] and prov["git_commit"] and prov["versions"]["deepspeed"]
    assert prov["precision"] == "fp32"
    recs = read_records(two_rank_run)
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    assert all(r["images_per_s"] > 0 and "data_wait_s" in r and "step_time_s" in r for r in recs)
    summary = json.loads((two_rank_run / "summary.json").read_text())
    assert summary["epochs"] == 4 and {"val_loss", "val_top1"} <= summary["final"].keys() and summary["best"]["epoch"]
    assert summary["test"]["test_num_samples"] == 16
    assert (two_rank_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any((two_rank_run / "tensorboard").iterdir())
    last, best = two_rank_run / "checkpoints" / "last", two_rank_run / "checkpoints" / "best"
    assert (last / "rng_rank0.pt").exists() and (last / "rng_rank1.pt").exists()
    # best is weights only (evaluated below on 1-3 ranks); last is DeepSpeed's full, resumable checkpoint
    assert sorted(p.name for p in best.iterdir()) == ["config.json", "layout.json", "model.safetensors", "train_state.json"]
    assert sum(p.stat().st_size for p in last.iterdir()) > 2.5 * (best / "model.safetensors").stat().st_size


def test_console_shows_each_epoch_and_a_summary(two_rank_run):
    import re

    text = (two_rank_run.parent / "console.txt").read_text()
    recs = read_records(two_rank_run)
    lines = [line for line in text.splitlines() if re.search(r"epoch \d/4 \[finetune\]  train_loss", line)]
    assert len(lines) == 4  # one per epoch, from rank 0 only
    for line, rec in zip(lines, recs):
        assert f"epoch {rec['epoch']}/4" in line and f"train_loss {rec['train_loss']:.4f}" in line
        assert f"val_top1 {rec['val_top1']:.4f}" in line and f"val_loss {rec['val_loss']:.4f}" in line
        assert line.rstrip().endswith("img/s")
    summary = json.loads((two_rank_run / "summary.json").read_text())
    best, metric = summary["state"]["best_epoch"], yaml.safe_load((two_rank_run / "config.yaml").read_text())["eval"]["metric"]
    assert f"* new best {metric}" in lines[0] and f"* new best {metric}" in lines[best - 1]
    assert text.count("done: 4 epochs") == 1 and f"best epoch {best} ({metric} {summary['state']['best_metric']:.4f})" in text
    assert f"test_top1 {summary['test']['test_top1']:.4f}" in text and f"run folder: {two_rank_run}" in text


def test_outputs_people_read(two_rank_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(two_rank_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "val/top1", "val/loss", "test/top1", "test/loss"} <= tags
    assert all(t.split("/")[0] in ("train", "val", "test") for t in tags), tags  # one scheme, no bare 'lr'
    classes = yaml.safe_load((two_rank_run / "config.yaml").read_text())["provenance"]["classes"]
    confusion = list(csv.reader((two_rank_run / "test_confusion.csv").read_text().splitlines()))
    assert confusion[0][1:] == classes and [r[0] for r in confusion[1:]] == classes
    assert sum(int(v) for r in confusion[1:] for v in r[1:]) == 16
    assert (two_rank_run / "test_confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_two_ranks_learn(two_rank_run):
    recs = read_records(two_rank_run)
    assert recs[-1]["train_loss"] < recs[0]["train_loss"] or max(r["val_top1"] for r in recs) > 0.25


def test_evaluate_tool_matches_training_on_1_2_3_ranks(two_rank_run):
    from tools.evaluate import evaluate_run

    recs = read_records(two_rank_run)
    summary = json.loads((two_rank_run / "summary.json").read_text())
    best = recs[summary["best"]["epoch"] - 1]
    results = {1: evaluate_run(two_rank_run, "val", "best", ["--loader.num_workers=0"])}
    predictions = {1: (two_rank_run / "eval" / "val_best_predictions.csv").read_text()}
    for world in (2, 3):
        deepspeed_cmd(world, "tools/evaluate.py", "--run", str(two_rank_run), "--checkpoint", "best")
        results[world] = json.loads((two_rank_run / "eval" / "val_best_metrics.json").read_text())
        predictions[world] = (two_rank_run / "eval" / "val_best_predictions.csv").read_text()
    for world, metrics in results.items():
        for key in SCALARS:  # in-training evaluation of the best epoch, and every world size, agree
            assert metrics[key] == pytest.approx(best[key], rel=1e-5, abs=1e-7), (world, key)
        assert metrics["val_confusion_matrix"] == results[1]["val_confusion_matrix"]
        assert metrics["val_per_class"] == results[1]["val_per_class"]
    rows = [list(csv.reader(p.splitlines())) for p in predictions.values()]
    classes = results[1]["val_per_class"].keys()
    for r in rows:
        assert [x[:4] for x in r] == [x[:4] for x in rows[0]]  # manifest row, image path, true label, prediction
        assert len(r) == 17 and r[0] == ["row", "image", "label", "pred", "prob", *(f"prob_{c}" for c in classes)]
        assert all(x[1].startswith("images/val/") for x in r[1:])
        assert np.allclose([[float(v) for v in x[4:]] for x in r[1:]], [[float(v) for v in x[4:]] for x in rows[0][1:]],
                           atol=1e-5)
        assert np.allclose([sum(float(v) for v in x[5:]) for x in r[1:]], 1.0, atol=1e-4)  # every class's probability
    assert (two_rank_run / "eval" / "val_best_confusion.csv").exists()
    test = evaluate_run(two_rank_run, "test", "best", ["--loader.num_workers=0"])
    recorded = json.loads((two_rank_run / "test_metrics.json").read_text())
    assert test["test_top1"] == recorded["test_top1"] and test["test_loss"] == pytest.approx(recorded["test_loss"], rel=1e-5)
    assert (two_rank_run / "eval" / "test_best_per_class.csv").exists()


def test_typo_in_deepspeed_key_fails_clearly(tiny_overrides, tmp_path):
    with pytest.raises(AssertionError, match=r"config error: deepspeed\.extra\.zero_optimisation: not a DeepSpeed config key; "
                                             r"did you mean 'zero_optimization'"):
        run_cmd([PY, "engine/train.py", "--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={tmp_path}",
                 "--deepspeed.extra={zero_optimisation: {stage: 1}}"])
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "metrics.jsonl").exists()


def test_train_shards_are_disjoint(tiny_overrides, tmp_path):
    from engine.config import load_config
    from engine.data.context import DataContext
    from engine.data.loaders import create_loader

    cfg = load_config("configs/demo.yaml", tiny_overrides)
    ctx = DataContext(cfg.data, 0, cfg.model.text_encoder, cfg.model.text_max_length)
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = create_loader(cfg, ctx, "train", True, rank, 2)
            loader.set_epoch(epoch)
            seen.append(set(loader.positions().tolist()))
        assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) > 0


def test_two_ranks_resume_mid_epoch_bitwise(two_rank_run, tiny_overrides, tmp_path):
    """Two ranks killed inside an epoch (update 6 of 4 per epoch) and resumed end with the uninterrupted run's weights.

    Each rank restores its own RNG and its place in its shard; the resumed run must not replay or skip a batch.
    """
    import torch

    args = ["--config", "configs/demo.yaml", *tiny_overrides, f"--run.output_dir={tmp_path}", "--run.name=killed",
            "--train.epochs=4", "--optim.lr=0.003", "--eval.test=true", "--loader.batch_size=4",
            "--train.max_steps_per_epoch=4", "--train.checkpoint_every_steps=1"]
    deepspeed_cmd(2, "engine/train.py", *args, "--stop-after-step=6")
    killed = tmp_path / "killed"
    assert [r["epoch"] for r in read_records(killed)] == [1]  # epoch 2 was cut short
    deepspeed_cmd(2, "engine/train.py", *args, "--resume")

    reference, resumed = module_weights(two_rank_run), module_weights(killed)
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert reference.keys() == resumed.keys() and not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert [r["val_loss"] for r in read_records(killed)] == [r["val_loss"] for r in read_records(two_rank_run)]
