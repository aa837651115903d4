"""Distillation from a finished run: its class probabilities on the train rows as soft targets.

The teacher's predictions are computed once, before the student trains, by evaluating it on the train split
(``python tools/evaluate.py --run TEACHER --split train`` writes TEACHER/eval/train_best_probs.npz, eval-time
preprocessing, one row per train sample). The student's loss is

    (1 - train.distill_alpha) * classification loss + train.distill_alpha * T^2 * KL(teacher_T || student_T)

with T = ``train.distill_temperature`` softening both distributions (teacher_T = softmax(log p / T), which is
softmax(teacher logits / T)); T^2 keeps the term's gradient scale independent of T (Hinton et al. 2015).
Mixup/CutMix are refused with it: a mixed image has no teacher prediction. The loss term itself is
``engine.training.losses.distillation_loss``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from engine.errors import ConfigError


def teacher_file(run: str | Path) -> Path:
    return Path(run) / "eval" / "train_best_probs.npz"


class Teacher:
    """Teacher probabilities [rows, C] indexed by manifest row, moved to the student's device on first use."""

    def __init__(self, probs_by_row: torch.Tensor):
        self.table = probs_by_row

    def targets(self, rows) -> torch.Tensor:
        rows = torch.as_tensor(rows)
        if self.table.device != rows.device:
            self.table = self.table.to(rows.device)
        return self.table[rows.long()]


def load_teacher(cfg, classes: list[str], train_rows: np.ndarray) -> Optional[Teacher]:
    """The teacher of ``train.distill_from`` (None without one); refused naming the key when its predictions are
    missing, cover other classes or miss some of this run's train rows."""
    if not cfg.train.distill_from:
        return None
    where = f"train.distill_from={cfg.train.distill_from}"
    if cfg.augment.mixup_alpha or cfg.augment.cutmix_alpha:
        raise ConfigError(f"{where}: distillation needs unmixed images (augment.mixup_alpha / cutmix_alpha = 0)")
    path = teacher_file(cfg.train.distill_from)
    if not path.is_file():
        raise ConfigError(f"{where}: no teacher predictions at {path}; make them with "
                          f"`python tools/evaluate.py --run {cfg.train.distill_from} --split train`")
    z = np.load(path)
    teacher_classes = [str(c) for c in z["classes"]]
    if teacher_classes != list(classes):
        raise ConfigError(f"{where}: the teacher's classes {teacher_classes} are not this run's {list(classes)}")
    rows = z["rows"].astype(np.int64)
    missing = np.setdiff1d(train_rows, rows)
    if len(missing):
        raise ConfigError(f"{where}: {path} has no prediction for {len(missing)} of this run's train rows (e.g. "
                          f"{missing[:5].tolist()}); evaluate the teacher on this run's train split")
    table = torch.zeros(int(max(rows.max(), train_rows.max())) + 1, len(classes), dtype=torch.float32)
    table[torch.from_numpy(rows)] = torch.from_numpy(z["probs"].astype(np.float32))
    return Teacher(table)
