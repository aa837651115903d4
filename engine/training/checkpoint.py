"""Checkpoints through DeepSpeed (every rank calls save/load) plus what DeepSpeed doesn't keep:
training state (stage, epoch, step, best metric, patience), loader position, and every rank's RNG state
and own buffers (BatchNorm statistics drift apart between ranks inside an epoch; the model file holds
their average, each rank's ``buffers_rank{r}.pt`` its own, so a run resumed mid-epoch continues exactly).

A checkpoint is written under ``<tag>.partial`` and renamed over ``<tag>`` only
once every rank has finished, so a crash or kill while saving leaves the
previous good checkpoint intact.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from engine.training.distributed import barrier, restore_buffers


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer updates done
    stage: str = "finetune"  # stage of the engine this state was saved from ("frozen" / "finetune")
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    bad_epochs: int = 0  # epochs without improvement (early stopping)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, folder: Path, tag: str, state: TrainState, loader_state: dict, config: dict, rank: int,
                    own_buffers: Optional[dict] = None) -> None:
    """Collective: every rank must call it.  ``own_buffers``: this rank's buffers, where the module holds averaged ones."""
    folder = Path(folder)
    partial = f"{tag}.partial"
    if rank == 0 and (folder / partial).exists():
        shutil.rmtree(folder / partial)
    barrier()
    client = {"train_state": asdict(state), "loader": loader_state, "config": config}
    engine.save_checkpoint(str(folder), tag=partial, client_state=client, save_latest=False)
    torch.save(rng_state(), folder / partial / f"rng_rank{rank}.pt")
    if own_buffers is not None:
        torch.save(own_buffers, folder / partial / f"buffers_rank{rank}.pt")
    if rank == 0:
        (folder / partial / "train_state.json").write_text(json.dumps(asdict(state)))
    barrier()
    if rank == 0:
        old = folder / f"{tag}.old"
        if (folder / tag).exists():
            (folder / tag).rename(old)
        (folder / partial).rename(folder / tag)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def peek_state(folder: Path, tag: str) -> TrainState:
    """The training state of a checkpoint without loading it (which engine to build for it)."""
    path = Path(folder) / tag / "train_state.json"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint '{tag}' under {folder} (nothing to resume)")
    return TrainState(**json.loads(path.read_text()))


def load_checkpoint(engine, folder: Path, tag: str, rank: int, load_optimizer: bool = True) -> tuple[TrainState, dict]:
    """Collective. Returns (training state, loader state); restores this rank's RNG streams and own buffers."""
    path, client = engine.load_checkpoint(str(folder), tag=tag, load_optimizer_states=load_optimizer,
                                          load_lr_scheduler_states=load_optimizer)
    if path is None:
        raise FileNotFoundError(f"no checkpoint '{tag}' under {folder}")
    rng_file = Path(folder) / tag / f"rng_rank{rank}.pt"
    if load_optimizer and rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    buffers_file = Path(folder) / tag / f"buffers_rank{rank}.pt"
    if load_optimizer and buffers_file.exists():  # absent for a rank the saving run did not have: averaged ones stay
        restore_buffers(engine.module, torch.load(buffers_file, map_location="cpu", weights_only=True))
    return TrainState(**client["train_state"]), client["loader"]


def load_weights(engine, folder: Path, tag: str) -> None:
    """Collective. Only the model weights of checkpoint ``tag`` (evaluation of 'best' or 'last')."""
    path, _ = engine.load_checkpoint(str(folder), tag=tag, load_module_only=True, load_optimizer_states=False,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"no checkpoint '{tag}' under {folder}")
