"""The run folder: resolved config with provenance, metrics.jsonl, summary.json.

On a shared file system (``run.shared_fs: true``) global rank 0 writes it. On node-local disks each node's local
rank 0 writes its node's copy: config.yaml and the checkpoints its ranks resume from; the results (metrics.jsonl,
summary.json, curves, TensorBoard, test metrics) are written once, on global rank 0's node.
"""
from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from engine.config import Config, save_config
from engine.errors import RunFolderError
from engine.training.distributed import check_folder_sharing, folder_writer, launch_rank_world

log = logging.getLogger(__name__)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist_name in ("torch", "torchvision", "timm", "transformers", "deepspeed", "nvidia-dali-cuda120", "triton", "numpy"):
        try:
            out[dist_name] = version(dist_name)
        except PackageNotFoundError:
            out[dist_name] = None
    return out


def provenance(cfg: Config, dataset_version: str, classes: list[str], world: int, extra: Optional[dict] = None) -> dict:
    return {
        "dataset_version": dataset_version,  # sha256 of the manifest file
        "seed": cfg.run.seed,
        "subset": {"max_train_samples": cfg.data.max_train_samples, "max_val_samples": cfg.data.max_val_samples,
                   "max_test_samples": cfg.data.max_test_samples},
        "classes": classes,
        "world_size": world,
        "git_commit": _git_commit(),
        "versions": library_versions(),
        **(extra or {}),
    }


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds a run's results (a folder with only a config.yaml is a start that failed early)."""
    checkpoints = path / "checkpoints"
    return (path / "metrics.jsonl").exists() or (path / "summary.json").exists() or (
        checkpoints.is_dir() and any(checkpoints.iterdir()))


def check_run_folder(cfg: Config, resume: bool) -> None:
    """Before anything is written: a new run never replaces an old one (unless ``run.existing=keep_aside``),
    ``--resume`` has something to resume on this layout, and the folder can be written."""
    from engine.training.checkpoint import resolve_tag

    path = cfg.run_dir
    if resume:
        if resolve_tag(path / "checkpoints", "last") is None:
            raise RunFolderError(f"--resume: nothing to resume in {path} (no checkpoint 'last' under {path / 'checkpoints'}); "
                                 "start without --resume, or point run.output_dir/run.name at the run to continue")
        check_resume_layout(cfg)
    elif cfg.run.existing == "refuse" and holds_run(path):
        raise RunFolderError(f"{path} already holds a run (checkpoints / metrics.jsonl); continue it with --resume, or "
                             f"start a new one with --run.name=<fresh name> (--run.existing=keep_aside moves it aside)")
    if folder_writer(cfg.run.shared_fs):
        _check_writable(path)


def check_resume_layout(cfg: Config) -> None:
    """'last' must be resumable by this launch: a full checkpoint, the same ZeRO stage, and on another world size
    every saving rank's optimizer shard in this folder (DeepSpeed's universal conversion reads them all)."""
    from engine.training.checkpoint import read_layout, resolve_tag, zero_shard_names

    folder = cfg.run_dir / "checkpoints"
    layout = read_layout(folder, "last")
    if layout is None:  # written before checkpoints recorded their layout: DeepSpeed's own checks apply
        return
    where = folder / resolve_tag(folder, "last")
    if layout.kind == "weights":
        raise RunFolderError(f"--resume: {where} holds the model's weights only (train.checkpoint_last=weights), "
                             "nothing to resume from; start a fresh run.name (tools/evaluate.py still reads it)")
    stage = cfg.deepspeed.extra.get("zero_optimization", {}).get("stage", cfg.deepspeed.zero_stage)  # extra wins
    if layout.zero_stage != stage:
        raise RunFolderError(f"--resume: {where} was saved with ZeRO stage {layout.zero_stage}, this run has stage "
                             f"{stage}; resume with --deepspeed.zero_stage={layout.zero_stage}")
    _, world = launch_rank_world()
    if world != layout.world_size and layout.mid_epoch:
        raise RunFolderError(f"--resume on {world} rank(s): {where} was saved inside an epoch by {layout.world_size} "
                             "ranks, and the rest of that epoch is their shards' rest; resume on "
                             f"{layout.world_size} ranks (any world size resumes from a checkpoint taken at an epoch's end)")
    missing = [n for n in zero_shard_names(layout) if not (where / n).is_file()]
    if world != layout.world_size and missing:
        raise RunFolderError(
            f"--resume on {world} rank(s): {where} was saved by {layout.world_size} ranks with ZeRO-{layout.zero_stage}, "
            f"whose optimizer shards must all be in this folder to be re-partitioned, but {len(missing)} are not here "
            f"(e.g. {missing[0]}" + ("; with run.shared_fs=false each node's disk holds its own ranks' shards" if not
                                      layout.shared_fs else "") +
            f"). Copy every node's {where.name}/zero_pp_rank_* files into it, or resume on {layout.world_size} ranks")


def move_old_run_aside(cfg: Config, resume: bool) -> None:
    """``run.existing=keep_aside``: the folder's writer (rank 0, or each node's local rank 0 with
    ``run.shared_fs=false``) renames a previous run to ``<name>.prev-<time>`` (once every check passed)."""
    path = cfg.run_dir
    if resume or cfg.run.existing != "keep_aside" or not folder_writer(cfg.run.shared_fs) or not holds_run(path):
        return
    aside = path.with_name(f"{path.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
    while aside.exists():
        aside = aside.with_name(aside.name + "x")
    path.rename(aside)
    log.warning("run.existing=keep_aside: the previous run in %s was moved to %s", path, aside)


def _check_writable(path: Path) -> None:
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise RunFolderError(f"run.output_dir={path.parent}: {existing} is a file, not a folder; choose another run.output_dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise RunFolderError(f"run.output_dir={path.parent}: cannot write in {existing} ({e.strerror or e}); "
                             "choose a writable run.output_dir") from None


class RunDir:
    """Files of one run. Collective: made on every rank, it checks that ``run.shared_fs`` says how the nodes see
    the folder. ``writer`` (one rank per folder) writes config.yaml; ``is_main`` (global rank 0) the results."""

    def __init__(self, cfg: Config, is_main: bool):
        self.path = cfg.run_dir
        self.is_main = is_main
        self.writer = folder_writer(cfg.run.shared_fs)
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
        check_folder_sharing(self.path, cfg.run.shared_fs)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, cfg: Config, prov: dict) -> None:
        if self.writer:  # written whole or not at all: a kill here must not leave a run without its config
            tmp = self.path / "config.yaml.tmp"
            save_config(cfg, tmp, prov)
            tmp.replace(self.path / "config.yaml")

    def log_metrics(self, record: dict, fresh: bool = False) -> None:
        if self.is_main:
            with open(self.path / "metrics.jsonl", "w" if fresh else "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, epochs: int) -> None:
        """On resume: drop records of epochs after the checkpoint (they will be trained again)."""
        if self.is_main:
            kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= epochs]
            (self.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))

    def read_metrics(self) -> list[dict]:
        p = self.path / "metrics.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []

    def write_json(self, name: str, obj: dict) -> None:
        if self.is_main:
            (self.path / name).write_text(json.dumps(obj, indent=2))
