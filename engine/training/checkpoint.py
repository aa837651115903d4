"""Checkpoints through DeepSpeed (every rank calls save/load) plus what DeepSpeed doesn't keep:
training state (stage, epoch, step, best metric, patience), loader position, and every rank's RNG state
and own buffers (BatchNorm statistics drift apart between ranks inside an epoch; the model file holds
their average, each rank's ``buffers_rank{r}.pt`` its own, so a run resumed mid-epoch continues exactly).

A checkpoint is written under ``<tag>.partial`` and renamed over ``<tag>`` only
once every rank has finished, so a crash or kill while saving leaves the
previous good checkpoint intact: ``<tag>`` moves to ``<tag>.old`` first, and a
kill between the two renames leaves ``<tag>.old``, which ``resolve_tag`` finds.
A full disk while saving is reported naming the file; the previous checkpoint stays.

Nothing in a run folder is unpickled as code: every ``torch.load`` of a
checkpoint, DeepSpeed's own included, runs with ``weights_only=True`` (tensors,
containers, numbers, strings and the few DeepSpeed/numpy types listed in
``_SAFE_GLOBALS``), so a crafted file someone else wrote is refused instead of run.
"""
from __future__ import annotations

import contextlib
import errno
import json
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from engine.errors import CheckpointError
from engine.training.distributed import barrier, restore_buffers

CONFIG_FILE = "config.json"  # the config the checkpoint was trained with (``--resume`` compares it)


class NoCheckpoint(CheckpointError, FileNotFoundError):
    """There is no checkpoint of that tag (nothing to resume or evaluate)."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer updates done
    stage: str = "finetune"  # stage of the engine this state was saved from ("frozen" / "finetune")
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    bad_epochs: int = 0  # epochs without improvement (early stopping)


def rng_state() -> dict:
    """Every RNG stream as tensors, ints and floats only: it loads with ``weights_only=True``."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_tag(folder: Path, tag: str) -> Optional[str]:
    """The folder name that holds checkpoint ``tag``: ``tag``, or ``tag.old`` when a kill fell between the two
    renames of a save (``tag`` moved aside, ``tag.partial`` not yet in its place); None if there is neither."""
    for name in (tag, f"{tag}.old"):
        if (Path(folder) / name / "train_state.json").is_file():
            return name
    return None


def _require(folder: Path, tag: str) -> str:
    name = resolve_tag(folder, tag)
    if name is None:
        raise NoCheckpoint(f"no checkpoint '{tag}' under {folder} (nothing to resume or evaluate)")
    return name


def _no_space(e: BaseException) -> bool:
    """torch.save reports a full disk as OSError(ENOSPC) or as RuntimeError 'enforce fail at inline_container.cc'."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("inline_container" in text or "file write failed" in text
                                            or "No space left" in text)


def save_checkpoint(engine, folder: Path, tag: str, state: TrainState, loader_state: dict, config: dict, rank: int,
                    own_buffers: Optional[dict] = None) -> None:
    """Collective: every rank must call it.  ``own_buffers``: this rank's buffers, where the module holds averaged ones."""
    folder = Path(folder)
    partial = f"{tag}.partial"
    if rank == 0 and (folder / partial).exists():
        shutil.rmtree(folder / partial)
    barrier()
    client = {"train_state": asdict(state), "loader": loader_state, "config": config}
    try:
        engine.save_checkpoint(str(folder), tag=partial, client_state=client, save_latest=False)
        torch.save(rng_state(), folder / partial / f"rng_rank{rank}.pt")
        if own_buffers is not None:
            torch.save(own_buffers, folder / partial / f"buffers_rank{rank}.pt")
        if rank == 0:
            (folder / partial / CONFIG_FILE).write_text(json.dumps(config))
            (folder / partial / "train_state.json").write_text(json.dumps(asdict(state)))
    except (OSError, RuntimeError) as e:
        if not _no_space(e):
            raise
        shutil.rmtree(folder / partial, ignore_errors=True)  # give the space back; the previous checkpoint stays
        kept = resolve_tag(folder, tag)
        raise CheckpointError(f"no space left on the device while saving checkpoint '{tag}' in {folder / partial} "
                              f"({str(e).splitlines()[0][:200]}); "
                              + (f"the previous '{tag}' is kept ({folder / kept}); " if kept else "")
                              + "free space there, then continue with --resume") from None
    barrier()
    if rank == 0:
        old = folder / f"{tag}.old"
        if (folder / tag).exists():
            shutil.rmtree(old, ignore_errors=True)  # a previous save's leftover; (folder / tag) is the newer
            (folder / tag).rename(old)
        (folder / partial).rename(folder / tag)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def peek_state(folder: Path, tag: str) -> TrainState:
    """The training state of a checkpoint without loading it (which engine to build for it)."""
    return TrainState(**json.loads((Path(folder) / _require(folder, tag) / "train_state.json").read_text()))


def checkpoint_config(folder: Path, tag: str) -> Optional[dict]:
    """The config a checkpoint was trained with (None for checkpoints written before it was stored beside them)."""
    name = resolve_tag(folder, tag)
    path = Path(folder) / name / CONFIG_FILE if name else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


# What DeepSpeed (0.19) and our side files put in a checkpoint besides tensors and plain containers.
def _safe_globals() -> list:
    import collections

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / 1
    out: list = [collections.OrderedDict, collections.defaultdict, set, frozenset, torch.Size, np.dtype,
                 np.ndarray, multiarray._reconstruct, multiarray.scalar]
    out += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.int32, np.bool_)]
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        out += [DynamicLossScaler, LossScaler, ZeroStageEnum, fragment_address]
    except ImportError:  # another DeepSpeed layout: a refused type is named in the error, add it here
        pass
    return out


@contextlib.contextmanager
def weights_only_loads(where: Path) -> Iterator[None]:
    """Every ``torch.load`` inside -- DeepSpeed calls it with ``weights_only=False`` -- runs with ``weights_only=True``;
    a file that would need arbitrary code to unpickle is refused with a CheckpointError naming it."""
    real = torch.load

    def safe_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"refusing to load {f}: it holds objects that are not plain tensors and containers "
                                  f"(weights_only=True; {str(e).splitlines()[0][:300]}). Only resume or evaluate "
                                  f"checkpoints you trust; {where} may have been written by someone else") from None

    torch.load = safe_load
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    finally:
        torch.load = real


def load_checkpoint(engine, folder: Path, tag: str, rank: int, load_optimizer: bool = True) -> tuple[TrainState, dict]:
    """Collective. Returns (training state, loader state); restores this rank's RNG streams and own buffers."""
    folder = Path(folder)
    name = _require(folder, tag)
    with weights_only_loads(folder / name):
        try:
            path, client = engine.load_checkpoint(str(folder), tag=name, load_optimizer_states=load_optimizer,
                                                  load_lr_scheduler_states=load_optimizer)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            raise CheckpointError(f"{folder / name} does not fit this model ({str(e).splitlines()[0][:200]} ...): "
                                  f"the model settings differ from the ones it was trained with ({folder / name / CONFIG_FILE}); "
                                  "resume with those, or start a fresh run.name") from None
        if path is None:
            raise NoCheckpoint(f"no checkpoint '{tag}' under {folder}")
        rng_file = folder / name / f"rng_rank{rank}.pt"
        if load_optimizer and rng_file.exists():
            set_rng_state(_rng_from_file(rng_file))
        buffers_file = folder / name / f"buffers_rank{rank}.pt"
        if load_optimizer and buffers_file.exists():  # absent for a rank the saving run did not have: averaged ones stay
            restore_buffers(engine.module, torch.load(buffers_file, map_location="cpu"))
    return TrainState(**client["train_state"]), client["loader"]


def _rng_from_file(path: Path) -> dict:
    state = torch.load(path)
    if isinstance(state.get("numpy"), tuple):  # written before RNG state was stored as tensors
        name, keys, pos, has_gauss, cached = state["numpy"]
        version, mt, gauss = state["python"]
        state = {**state, "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": pos,
                                    "has_gauss": has_gauss, "cached": cached},
                 "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss}}
    return state


def load_weights(engine, folder: Path, tag: str) -> None:
    """Collective. Only the model weights of checkpoint ``tag`` (evaluation of 'best' or 'last')."""
    folder = Path(folder)
    name = _require(folder, tag)
    with weights_only_loads(folder / name):
        path, _ = engine.load_checkpoint(str(folder), tag=name, load_module_only=True, load_optimizer_states=False,
                                         load_lr_scheduler_states=False)
    if path is None:
        raise NoCheckpoint(f"no checkpoint '{tag}' under {folder}")
