"""Distillation: the T^2-scaled KL term vanishes when the student already predicts the teacher; a student
trains against a teacher run's train-split probabilities; missing teacher predictions are refused by key."""
import json
import subprocess

import pytest
import torch

from engine.config import load_config
from engine.training.losses import add_distillation, distillation_loss
from tests.training.conftest import DEEPSPEED, PY, ROOT, env, run_cmd, train_cmd  # noqa: F401


def test_loss_is_zero_at_the_teacher_and_positive_elsewhere():
    teacher = torch.softmax(torch.randn(6, 4), dim=1)
    for t in (1.0, 3.0):
        assert distillation_loss(torch.log(teacher), teacher, t).item() == pytest.approx(0, abs=1e-6)
        assert distillation_loss(torch.randn(6, 4), teacher, t).item() > 0


def test_alpha_mixes_the_terms():
    cfg = load_config(None, ["--train.distill_alpha=0.25", "--train.distill_temperature=2"])
    logits, teacher = torch.randn(3, 4), torch.softmax(torch.randn(3, 4), dim=1)
    parts = add_distillation({"cls": torch.tensor(2.0)}, logits, teacher, cfg)
    assert parts["cls"].item() == pytest.approx(1.5)
    assert parts["distill"].item() == pytest.approx(0.25 * distillation_loss(logits, teacher, 2.0).item())


def test_student_trains_from_a_teacher_run(tiny_overrides, tmp_path):
    teacher = tmp_path / "teacher"
    student = [*tiny_overrides, "--train.epochs=1", f"--run.output_dir={tmp_path}", f"--train.distill_from={teacher}"]
    train_cmd(tiny_overrides, "--train.epochs=1", f"--run.output_dir={tmp_path}", "--run.name=teacher")
    p = subprocess.run([PY, "engine/train.py", "--config", "configs/demo.yaml", *student, "--run.name=early"],
                       cwd=ROOT, env=env(), capture_output=True, text=True)
    assert p.returncode == 2 and "train.distill_from" in p.stderr and "--split train" in p.stderr, p.stderr
    run_cmd([PY, "tools/evaluate.py", "--run", str(teacher), "--split", "train"])
    train_cmd(student, "--run.name=student", "--train.distill_alpha=1.0")
    records = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    # alpha = 1: the loss is the KL to a near-uniform teacher, far below the ~ln(4) = 1.39 of cross-entropy
    assert records[-1]["train_loss"] < 0.7
