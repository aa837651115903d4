"""Sharded cache builds: N builders (processes or machines) fill one ``.partial`` folder, then a seal finishes it.

A split's records are cut into chunks of ``chunk_size`` (the unit of resumable progress, ``writer.py``); shard
I of N owns the contiguous chunks ``[I * C // N, (I + 1) * C // N)`` of the C chunks, so the record ranges of two
shards never overlap and a shard's records are whole pages (records are 4 KiB-aligned) that no other builder
writes. Each builder of a shard holds an exclusive ``flock`` on ``<partial>/shards/<I>-of-<N>.lock`` for as long
as it writes (the kernel, or the NFS lock manager, drops it when the holder dies, so a killed shard is free
again at once) and notes its host and pid in ``<I>-of-<N>.json`` beside it, so a second builder of the same
shard is refused naming the first. The shard count is pinned in the partial's ``key.json`` by the first sharded
builder; progress is per chunk, so a partial may be finished under another count once no builder holds a shard.

``tools/build_cache.py --seal`` (``writer.seal_cache``) takes every shard's lock, names any shard that is still
held or has unfinished chunks, and otherwise verifies every record and seals the folder exactly as a
single-process build does: the result is byte-identical to one.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.data.cache import format as fmt
from engine.errors import UserError

ENV_RANKS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))


@dataclass(frozen=True)
class Shard:
    index: int  # I, 0-based
    count: int  # N

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def chunks(self, n_chunks: int) -> range:
        """The chunk indices this shard builds (contiguous; the shards of one count partition range(n_chunks))."""
        return range(self.index * n_chunks // self.count, (self.index + 1) * n_chunks // self.count)

    @property
    def stem(self) -> str:
        return f"{self.index}-of-{self.count}"


def parse_shard(text: str, env: Optional[dict] = None) -> Shard:
    """``I/N`` (0 <= I < N), or ``auto``: this process's rank and world size from a launcher's environment
    (DeepSpeed/torchrun ``RANK``/``WORLD_SIZE``, SLURM ``SLURM_PROCID``/``SLURM_NTASKS``, Open MPI)."""
    env = os.environ if env is None else env
    if text == "auto":
        for rank, world in ENV_RANKS:
            if rank in env and world in env:
                return _shard(env[rank], env[world], f"--shard auto ({rank}={env[rank]}, {world}={env[world]})")
        raise UserError("--shard auto: no launcher rank in the environment (RANK/WORLD_SIZE, SLURM_PROCID/SLURM_NTASKS "
                        "or OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE); give --shard I/N instead")
    i, sep, n = text.partition("/")
    if not sep:
        raise UserError(f"--shard {text!r}: expected I/N (shard I of N, 0 <= I < N) or auto")
    return _shard(i, n, f"--shard {text}")


def workers_per_builder(requested: int, env: Optional[dict] = None) -> int:
    """Build processes for one builder: ``requested`` (cache.workers), or with 0 (all cores) the node's cores
    divided among the builders a launcher started on it (DeepSpeed LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE, SLURM
    SLURM_NTASKS_PER_NODE), so N ranks per node do not each start a process per core."""
    env = os.environ if env is None else env
    if requested:
        return requested
    local = next((int(env[k]) for k in ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE")
                  if str(env.get(k, "")).isdigit()), 1)
    return max(1, (os.cpu_count() or 1) // max(1, local))


def _shard(i: str, n: str, what: str) -> Shard:
    try:
        index, count = int(i), int(n)
    except ValueError:
        raise UserError(f"{what}: I and N must be integers") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"{what}: expected 0 <= I < N and N >= 1")
    return Shard(index, count)


def all_shards(count: int) -> list[Shard]:
    return [Shard(i, count) for i in range(count)]


class ShardClaim:
    """An exclusive lock on one shard of a partial build; ``release()`` (or the holder's death) frees it."""

    def __init__(self, partial: Path, shard: Shard, fd: int):
        self.partial, self.shard, self._fd = partial, shard, fd

    @classmethod
    def take(cls, partial: Path, shard: Shard, wait: bool = False, note: bool = True) -> "ShardClaim":
        """Claim ``shard``; held by another builder: UserError naming it, or (``wait``) wait for it to end.
        ``note``: record this process as the shard's builder (not for a probe that only asks if it is free)."""
        import logging

        folder = Path(partial) / fmt.SHARDS
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{shard.stem}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = claim_holder(partial, shard)
                if not wait:
                    raise UserError(f"shard {shard} of {Path(partial).name} is being built by {who}; two builders "
                                    "never write the same records: wait for it, or stop it and rerun this") from None
                logging.getLogger(__name__).warning("waiting for shard %s of %s: it is being built by %s", shard,
                                                    Path(partial).name, who)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if note:
            who = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (folder / f"{shard.stem}.json").write_text(json.dumps(who))
        return cls(partial, shard, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock; the note stays (it names the last builder)
            self._fd = None


def claim_holder(partial: Path, shard: Shard) -> str:
    """'host H, pid P (since T)' from the shard's claim note, or what /proc/locks says, or 'another builder'."""
    try:
        note = json.loads((Path(partial) / fmt.SHARDS / f"{shard.stem}.json").read_text())
        return f"host {note['host']}, pid {note['pid']} (since {note['since']})"
    except (OSError, ValueError, KeyError):
        return "another builder"


def take_all(partial: Path, count: int, wait: bool) -> list[ShardClaim]:
    """Claims on every shard of ``count`` (all or none: a refusal releases those already taken)."""
    claims: list[ShardClaim] = []
    try:
        for shard in all_shards(count):
            claims.append(ShardClaim.take(partial, shard, wait=wait))
    except BaseException:
        release(claims)
        raise
    return claims


def release(claims: list[ShardClaim]) -> None:
    for c in claims:
        c.release()


def held_shards(partial: Path, count: int) -> list[str]:
    """'I/N (by ...)' for each shard of ``count`` another builder holds now."""
    held = []
    for shard in all_shards(count):
        try:
            ShardClaim.take(partial, shard, note=False).release()
        except UserError:
            held.append(f"{shard} (by {claim_holder(partial, shard)})")
    return held


def unfinished_report(done: set[int], n_chunks: int, count: int, build: str) -> str:
    """'' when every chunk is done, else which shards of ``count`` are unfinished or not started and how to
    finish each (``build``: the build command, to which ``--shard I/N`` is appended)."""
    lines = []
    for shard in all_shards(count):
        chunks = shard.chunks(n_chunks)
        have = sum(k in done for k in chunks)
        if have < len(chunks):
            state = "not started" if have == 0 else f"unfinished ({have} of {len(chunks)} chunks done)"
            lines.append(f"shard {shard} {state}: run {build} --shard {shard}")
    return "; ".join(lines)


def running_shards(partial: Path) -> list[str]:
    """The shards of a partial build that a builder holds now ('I/N (by host H, pid P ...)'); [] when none is
    held or the folder pins no build. For tools that judge a partial abandoned: a shard holds no lock on
    ``cache.dir`` while it decodes, only its claim."""
    try:
        count = int(json.loads((Path(partial) / fmt.KEY_FILE).read_text()).get("shards", 1))
    except (OSError, ValueError):
        return []
    return held_shards(partial, count) if (Path(partial) / fmt.SHARDS).is_dir() else []
