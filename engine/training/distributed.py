"""Process-group setup and the few collectives the engine needs (rank 0 logs, metrics gathered)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_rank_world() -> tuple[int, int]:
    """(rank, world size) as the launcher set them, readable before the process group exists."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device() -> torch.device:
    """The device this process trains on (the launcher's LOCAL_RANK-th card, or the CPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed() -> DistInfo:
    """Join the DeepSpeed process group (launcher env), or form a group of one for `python engine/train.py`."""
    if "RANK" not in os.environ:  # plain single-process run: give DeepSpeed the env its launcher would
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank, world, local_rank, device)


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank (rank order)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across ranks.

    DeepSpeed averages gradients but leaves buffers alone, so each rank's
    BatchNorm statistics drift apart; evaluation (sharded over ranks) and the
    checkpoint (rank 0's copy) must see one model.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf.data, op=dist.ReduceOp.SUM)
            buf.data /= dist.get_world_size()
        else:
            dist.broadcast(buf.data, src=0)


def buffer_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of this rank's buffers (BatchNorm statistics), to put back with ``restore_buffers``."""
    return {name: buf.detach().clone() for name, buf in module.named_buffers()}


def restore_buffers(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    for name, buf in module.named_buffers():
        buf.data.copy_(snapshot[name])


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
