"""Process-group setup and the few collectives the engine needs (rank 0 logs, metrics gathered)."""
from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SHM_OP = "deepspeed_shm_comm"  # the op DeepSpeed JIT-builds on the CPU accelerator while the process group starts


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


def folder_writer(shared_fs: bool) -> bool:
    """Whether this rank writes what is written once per run folder (config.yaml, checkpoint bookkeeping).

    ``run.shared_fs: true``: every node sees one folder, global rank 0 writes it. ``false``: each node has a folder
    of its own on a local disk, and the node's local rank 0 writes it. Read from the launcher's environment, so it
    answers before the process group exists (preflight) and after.
    """
    rank, _ = launch_rank_world()
    return rank == 0 if shared_fs else int(os.environ.get("LOCAL_RANK", 0)) == 0


def check_folder_sharing(path: Path, shared_fs: bool) -> None:
    """Collective. Every rank must see exactly one writer of ``path`` (``folder_writer``), else ``run.shared_fs``
    is wrong: a rank that sees none would resume from files that are not there, two writers of one folder would
    rename the same checkpoint. Each writer leaves a probe file with a fresh name; every rank looks for them."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    from engine.errors import RunFolderError

    rank, world = dist.get_rank(), dist.get_world_size()
    token = broadcast_object(secrets.token_hex(8))  # a new name: no file system cache can hold an old answer
    writers: list = [None] * world
    dist.all_gather_object(writers, folder_writer(shared_fs))
    writers = [r for r, w in enumerate(writers) if w]
    probe = lambda r: Path(path) / f".writer-probe-{token}-rank{r}"  # noqa: E731
    if rank in writers:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe(rank).touch()
    barrier()
    seen: list = [None] * world
    dist.all_gather_object(seen, [r for r in writers if probe(r).exists()])
    barrier()
    if rank in writers:
        probe(rank).unlink(missing_ok=True)
    blind = [r for r in range(world) if not seen[r]]
    crowded = next(((r, s) for r, s in enumerate(seen) if len(s) > 1), None)
    if blind and shared_fs:  # the same verdict on every rank: all of them stop together
        raise RunFolderError(f"run.shared_fs=true, but rank(s) {blind} do not see the files global rank 0 writes in "
                             f"{path}: the run folder is not shared between the nodes; set run.shared_fs=false (each "
                             "node keeps its own copy, written by its local rank 0) or put run.output_dir on a shared "
                             "file system")
    if crowded is not None:
        raise RunFolderError(f"run.shared_fs=false, but {path} is one folder shared by several nodes (rank "
                             f"{crowded[0]} sees the files of ranks {crowded[1]}, each its node's writer): set "
                             "run.shared_fs=true, or give each node a folder on its own disk")
    if blind:
        raise RunFolderError(f"rank(s) {blind} do not see the files their node's local rank 0 writes in {path}; "
                             "the ranks of a node must share its run folder")


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
        with report_extension_lock_wait(None if torch.cuda.is_available() else _extension_lock(SHM_OP)):
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = local_device()
    if device.type == "cpu":
        atexit.register(_unlink_shm_buffer, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank, world, local_rank, device)


def _unlink_shm_buffer(rank: int) -> None:
    """Remove this rank's /dev/shm allreduce workspace (~67 MB) that DeepSpeed's CPU shm op creates and never unlinks.

    Every CPU run leaked one per rank; a day of test runs filled several GB of /dev/shm (RAM). Unlinking at exit is
    safe: peers opened it at start-up and keep their mapping.
    """
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")
    with contextlib.suppress(OSError):
        os.unlink(Path("/dev/shm") / name)


def _extension_lock(name: str) -> Optional[Path]:
    """The lock torch holds while it JIT-builds extension ``name`` (in TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False)) / "lock"
    except Exception:  # noqa: BLE001 -- a private torch helper; without it, say nothing rather than fail
        return None


def lock_held_elsewhere(lock: Path) -> bool:
    """Whether another open file holds the advisory lock on ``lock`` (torch's builds flock it; the file itself stays)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def report_extension_lock_wait(lock: Optional[Path], every_s: float = 30.0) -> Iterator[None]:
    """Say on the console when start-up waits on a torch extension build lock, instead of minutes of silence.

    On the CPU accelerator DeepSpeed builds its shm op under that lock in the user's extensions cache, shared by
    every job of the user: a second job blocks until the first one's build ends. Held before we start, it is
    another job's; held later, it may be this job's own build.
    """
    if lock is None:
        yield
        return
    hint = ("another job is building DeepSpeed's CPU shm op in the same torch extensions cache; this start waits until "
            "it finishes (set TORCH_EXTENSIONS_DIR to a folder of your own to build separately)")
    if lock_held_elsewhere(lock):
        _say(f"waiting for the lock {lock}: {hint}")
    done, waited = threading.Event(), [0.0]

    def watch() -> None:
        while not done.wait(every_s):
            waited[0] += every_s
            if lock_held_elsewhere(lock):
                _say(f"DeepSpeed start-up still waiting after {waited[0]:.0f} s; {lock} is held (by this job's build "
                     f"of DeepSpeed's CPU shm op, or by {hint})")

    watcher = threading.Thread(target=watch, name="extension-lock-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _say(message: str) -> None:
    log.warning(message)  # with no logging configured, Python's last-resort handler prints it on stderr


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
