"""engine/train.py with loader.order: block, the order for caches larger than memory, from the command line."""
from __future__ import annotations

import json

import torch

from tests.training.conftest import train_cmd


def test_train_py_trains_in_block_order(tiny_overrides, tmp_path):
    train_cmd(tiny_overrides, "--train.epochs=2", f"--run.output_dir={tmp_path}", "--run.name=block",
              "--loader.order=block", "--loader.block_size=4", "--loader.shuffle_window=2")
    run = tmp_path / "block"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    state = torch.load(run / "checkpoints" / "last" / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=True)["loader"]
    assert state["order"] == "block:4x2" and state["epoch"] == 2
