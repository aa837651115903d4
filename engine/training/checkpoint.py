"""Checkpoints through DeepSpeed (every rank calls save/load) plus what DeepSpeed doesn't keep:
training state (stage, epoch, step, best metric, patience), loader position, and every rank's RNG state
and own buffers (BatchNorm statistics drift apart between ranks inside an epoch; the model file holds
their average, each rank's ``buffers_rank{r}.pt`` its own, so a run resumed mid-epoch continues exactly).

A checkpoint is written under ``<tag>.partial`` and renamed over ``<tag>`` only
once every rank has finished, so a crash or kill while saving leaves the
previous good checkpoint intact: ``<tag>`` moves to ``<tag>.old`` first, and a
kill between the two renames leaves ``<tag>.old``, which ``resolve_tag`` finds.
A full disk while saving is reported naming the file; the previous checkpoint stays.

A tag is ``full`` (DeepSpeed's files plus ours: resumable) or ``weights`` (``model.safetensors``, the model's
state dict only: evaluate, predict, export), as ``train.checkpoint_last`` / ``checkpoint_best`` say; by default
``last`` is full and ``best`` weights only. ``layout.json`` records how the saving run was laid out (world size,
ZeRO stage, shared run folder), so a resume on another world size is converted (DeepSpeed's universal
checkpoint) or refused before anything starts. With ``run.shared_fs: false`` each node's local rank 0 writes its
node's copy (DeepSpeed's model file, our side files, the renames); every rank writes its own shards as before.

Nothing in a run folder is unpickled as code: every ``torch.load`` of a
checkpoint, DeepSpeed's own included, runs with ``weights_only=True`` (tensors,
containers, numbers, strings and the few DeepSpeed/numpy types listed in
``_SAFE_GLOBALS``), so a crafted file someone else wrote is refused instead of run.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from engine.errors import CheckpointError
from engine.optional import require
from engine.training.distributed import barrier, folder_writer, restore_buffers

CONFIG_FILE = "config.json"  # the config the checkpoint was trained with (``--resume`` compares it)
LAYOUT_FILE = "layout.json"  # how the saving run was laid out (``Layout``)
WEIGHTS_FILE = "model.safetensors"  # a weights-only tag: the model's state dict, nothing of DeepSpeed's


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


@dataclass(frozen=True)
class Layout:
    """How the run that saved a checkpoint was laid out: what a resume on another layout must know first."""

    world_size: int
    zero_stage: int  # ZeRO 1/2 shard the optimizer state per rank: zero_pp_rank_{r}_mp_rank_00_optim_states.pt
    shared_fs: bool = True  # False: each node's folder holds only its own ranks' shards
    kind: str = "full"  # full: DeepSpeed's files (resumable); weights: model.safetensors only
    mid_epoch: bool = False  # saved inside an epoch: only the same world size and batch size continue it


def read_layout(folder: Path, tag: str) -> Optional[Layout]:
    """The layout of checkpoint ``tag`` (None for checkpoints written before it was stored beside them)."""
    name = resolve_tag(folder, tag)
    path = Path(folder) / name / LAYOUT_FILE if name else None
    return Layout(**json.loads(path.read_text())) if path is not None and path.is_file() else None


def tag_kind(config: dict, tag: str) -> str:
    """What ``tag`` holds under this config: ``train.checkpoint_last`` / ``checkpoint_best``; any other tag is full."""
    return config.get("train", {}).get(f"checkpoint_{tag}", "full")


def zero_shard_names(layout: Layout) -> list[str]:
    """The optimizer shards a ZeRO checkpoint of this layout holds, one per saving rank (DeepSpeed's names)."""
    return [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(layout.world_size)] if layout.zero_stage else []


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
    """A full disk: OSError(ENOSPC); torch.save's RuntimeError 'enforce fail at inline_container.cc'; safetensors'
    error naming the OS error."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(m in text for m in ("inline_container", "file write failed", "No space left", "StorageFull",
                                   "os error 28"))


def save_checkpoint(engine, folder: Path, tag: str, state: TrainState, loader_state: dict, config: dict, rank: int,
                    own_buffers: Optional[dict] = None) -> None:
    """Collective: every rank must call it.  ``config`` (the run's, as a dict) says what ``tag`` holds
    (``tag_kind``) and who writes the folder (``run.shared_fs``).  ``own_buffers``: this rank's buffers, where the
    module holds averaged ones (full tags keep them for resume)."""
    folder = Path(folder)
    partial = f"{tag}.partial"
    shared = config.get("run", {}).get("shared_fs", True)
    writer = folder_writer(shared)  # global rank 0, or each node's local rank 0 for its own disk
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    loader_state = _epoch_end_as_next_start(loader_state, state)
    mid_epoch = bool(loader_state.get("batches_done", 0))
    layout = Layout(world, int(engine.zero_optimization_stage()), shared, tag_kind(config, tag), mid_epoch)
    if writer and (folder / partial).exists():
        shutil.rmtree(folder / partial)
    barrier()
    try:
        if layout.kind == "full":
            _save_full(engine, folder, partial, state, loader_state, config, rank, own_buffers, writer, shared)
        elif writer:
            (folder / partial).mkdir(parents=True)
            save_weights_file(engine.module, folder / partial / WEIGHTS_FILE)
        if writer:
            (folder / partial / CONFIG_FILE).write_text(json.dumps(config))
            (folder / partial / LAYOUT_FILE).write_text(json.dumps(asdict(layout)))
            (folder / partial / "train_state.json").write_text(json.dumps(asdict(state)))  # last: it marks a whole save
    except Exception as e:  # noqa: BLE001 -- only a full disk is ours to report; anything else is raised as it is
        if not _no_space(e):
            raise
        shutil.rmtree(folder / partial, ignore_errors=True)  # give the space back; the previous checkpoint stays
        kept = resolve_tag(folder, tag)
        raise CheckpointError(f"no space left on the device while saving checkpoint '{tag}' in {folder / partial} "
                              f"({str(e).splitlines()[0][:200]}); "
                              + (f"the previous '{tag}' is kept ({folder / kept}); " if kept else "")
                              + "free space there, then continue with --resume") from None
    barrier()
    if writer:
        old = folder / f"{tag}.old"
        if (folder / tag).exists():
            shutil.rmtree(old, ignore_errors=True)  # a previous save's leftover; (folder / tag) is the newer
            (folder / tag).rename(old)
        (folder / partial).rename(folder / tag)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def _epoch_end_as_next_start(loader_state: dict, state: TrainState) -> dict:
    """A position saved at an epoch's end (the loop stops the loader at its last batch, before the loader moves on
    by itself) as the next epoch's start, which any world size or batch size may resume."""
    if int(loader_state.get("epoch", state.epoch)) < state.epoch:
        return {**loader_state, "epoch": state.epoch, "batches_done": 0}
    return loader_state


def _save_full(engine, folder: Path, partial: str, state: TrainState, loader_state: dict, config: dict, rank: int,
               own_buffers: Optional[dict], writer: bool, shared: bool) -> None:
    """DeepSpeed's checkpoint (every rank its optimizer shard) plus each rank's RNG state and own buffers."""
    if not shared:  # DeepSpeed's model file once per node, what its checkpoint.use_node_local_storage sets at start
        engine.save_non_zero_checkpoint = writer
    client = {"train_state": asdict(state), "loader": loader_state, "config": config}
    engine.save_checkpoint(str(folder), tag=partial, client_state=client, save_latest=False)
    torch.save(rng_state(), folder / partial / f"rng_rank{rank}.pt")
    if own_buffers is not None:
        torch.save(own_buffers, folder / partial / f"buffers_rank{rank}.pt")


def save_weights_file(module: torch.nn.Module, path: Path) -> None:
    """The module's state dict as safetensors: copies (tied weights would share storage, which safetensors refuses)."""
    require("safetensors", "train.checkpoint_best/checkpoint_last=weights", "train.checkpoint_best=full")
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}, str(path),
              metadata={"format": "pt"})
    umask = os.umask(0)  # safetensors creates the file 0600; give it the mode torch.save's files get
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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


def load_checkpoint(engine, folder: Path, tag: str, rank: int, load_optimizer: bool = True,
                    shared_fs: bool = True) -> tuple[TrainState, dict]:
    """Collective. Returns (training state, loader state); restores this rank's RNG streams and own buffers.

    A ZeRO checkpoint saved on another world size is first converted to DeepSpeed's universal checkpoint (one
    file per parameter and optimizer state, any world size loads it) in ``<tag>.universal`` by the folder's writer
    (``shared_fs``: this run's ``run.shared_fs``), and removed after."""
    folder = Path(folder)
    name = _require(folder, tag)
    layout = read_layout(folder, tag)
    if layout is not None and layout.kind == "weights":
        raise CheckpointError(f"{folder / name} holds the model's weights only (train.checkpoint_last=weights): "
                              "there is no optimizer state to resume from; start a fresh run.name")
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    universal = load_optimizer and layout is not None and layout.zero_stage > 0 and layout.world_size != world
    with weights_only_loads(folder / name):
        source = _universal_copy(folder, name, shared_fs) if universal else name
        try:
            path, client = _deepspeed_load(engine, folder, source, load_optimizer, universal)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            raise CheckpointError(f"{folder / name} does not fit this model ({str(e).splitlines()[0][:200]} ...): "
                                  f"the model settings differ from the ones it was trained with ({folder / name / CONFIG_FILE}); "
                                  "resume with those, or start a fresh run.name") from None
        finally:
            if universal:
                barrier()
                if folder_writer(shared_fs):
                    shutil.rmtree(folder / source, ignore_errors=True)
                    (folder / "latest_universal").unlink(missing_ok=True)  # the converter's pointer to it
        if path is None:
            raise NoCheckpoint(f"no checkpoint '{tag}' under {folder}")
        rng_file = folder / name / f"rng_rank{rank}.pt"
        if load_optimizer and rng_file.exists():
            set_rng_state(_rng_from_file(rng_file))
        buffers_file = folder / name / f"buffers_rank{rank}.pt"
        if load_optimizer and buffers_file.exists():  # absent for a rank the saving run did not have: averaged ones stay
            restore_buffers(engine.module, torch.load(buffers_file, map_location="cpu"))
    state = TrainState(**client["train_state"])
    return state, _epoch_end_as_next_start(client["loader"], state)  # checkpoints saved before it was done at save


def _deepspeed_load(engine, folder: Path, name: str, load_optimizer: bool, universal: bool):
    """DeepSpeed's load of ``folder/name``; ``universal``: from a universal checkpoint (DeepSpeed reads its
    ``checkpoint.load_universal`` setting at load time, so it is switched on for this one load)."""
    from deepspeed.runtime.zero.utils import ZeRORuntimeException

    before = engine._config.load_universal_checkpoint
    engine._config.load_universal_checkpoint = universal
    try:
        return engine.load_checkpoint(str(folder), tag=name, load_optimizer_states=load_optimizer,
                                      load_lr_scheduler_states=load_optimizer)
    except ZeRORuntimeException as e:  # a checkpoint written before layout.json: its world size was not known
        raise CheckpointError(f"{folder / name}: {e} It was saved before checkpoints recorded their layout; resume it "
                              "on the world size it was saved with") from None
    finally:
        engine._config.load_universal_checkpoint = before


def _universal_copy(folder: Path, name: str, shared_fs: bool) -> str:
    """Collective. The folder writer converts ``folder/name`` into ``folder/<name>.universal`` (DeepSpeed's
    ds_to_universal); every rank returns its name. Every saving rank's shard must be in this folder."""
    import argparse

    from deepspeed.checkpoint import ds_to_universal

    target = f"{name}.universal"
    if folder_writer(shared_fs):
        shutil.rmtree(folder / target, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(folder / name), output_folder=str(folder / target),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)  # our model files lack Megatron's universal_checkpoint_info
        with contextlib.redirect_stdout(None):  # its progress lines say nothing a user needs
            ds_to_universal.main(args)
    barrier()
    return target


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
    """Collective. Only the model weights of checkpoint ``tag`` (evaluation of 'best' or 'last'), of either kind."""
    folder = Path(folder)
    name = _require(folder, tag)
    if (folder / name / WEIGHTS_FILE).is_file():
        load_weights_file(engine.module, folder / name / WEIGHTS_FILE)
        optimizer = getattr(engine, "optimizer", None)  # as DeepSpeed's module-only load: master weights follow
        if hasattr(optimizer, "refresh_fp32_params"):
            optimizer.refresh_fp32_params()
        elif hasattr(optimizer, "_restore_from_bit16_weights"):
            optimizer._restore_from_bit16_weights()
        return
    with weights_only_loads(folder / name):
        path, _ = engine.load_checkpoint(str(folder), tag=name, load_module_only=True, load_optimizer_states=False,
                                         load_lr_scheduler_states=False)
    if path is None:
        raise NoCheckpoint(f"no checkpoint '{tag}' under {folder}")


def load_weights_file(module: torch.nn.Module, path: Path) -> None:
    """A weights-only tag into ``module`` (safetensors: no pickle, nothing in the file can run)."""
    require("safetensors", f"reading the weights-only checkpoint {path}")
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path), device="cpu"))
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this model ({str(e).splitlines()[0][:200]} ...): the model settings "
                              f"differ from the ones it was trained with ({path.parent / CONFIG_FILE})") from None
