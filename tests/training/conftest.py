"""Tiny, fast run settings for the training tests (tiny timm ResNet, tiny BERT, 2 steps per epoch)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))


@pytest.fixture(scope="session")
def tiny_overrides(tiny_demo_dataset, tiny_text_encoder, tmp_path_factory) -> list[str]:
    """The demo recipe shrunk; it trains from the flash decode cache (the demo's default), built once here."""
    overrides = [f"--data.manifest={tiny_demo_dataset}", "--data.image_size=32", "--model.backbone=test_resnet",
                 f"--model.text_encoder={tiny_text_encoder}", "--model.text_max_length=16", "--model.fusion_dim=32",
                 "--loader.batch_size=8", "--loader.num_workers=0", "--train.max_steps_per_epoch=2", "--train.log_every=1",
                 "--optim.warmup_steps=0", "--run.deterministic=true", "--cache.stored_size=40",
                 f"--cache.dir={tmp_path_factory.mktemp('tiny_cache')}"]
    run_cmd([PY, "tools/build_cache.py", "--config", "configs/demo.yaml", *overrides, "--cache.splits=[train,val,test]",
             "--cache.workers=2"])
    return overrides


def module_weights(run: Path, tag: str = "last") -> dict:
    """The model weights of a run's checkpoint ``tag``: a weights-only tag's model.safetensors, or DeepSpeed's model
    file of a full one (loaded without unpickling code)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(run) / "checkpoints" / tag
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    return torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def run_cmd(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def train_cmd(overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    """Single-process run: `python engine/train.py`."""
    return run_cmd([PY, "engine/train.py", "--config", "configs/demo.yaml", *overrides, *extra])


def deepspeed_cmd(nprocs: int, script: str, *args: str) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus N script ...` (the CPU accelerator runs N processes over gloo)."""
    return run_cmd([DEEPSPEED, "--num_gpus", str(nprocs), "--master_port", str(free_port()), script, *args])
