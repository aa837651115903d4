"""The run folder: resolved config with provenance, metrics.jsonl, summary.json."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Optional

from engine.config import Config, save_config


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


class RunDir:
    """Files of one run; only rank 0 writes."""

    def __init__(self, cfg: Config, is_main: bool):
        self.path = cfg.run_dir
        self.is_main = is_main
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, cfg: Config, prov: dict) -> None:
        if self.is_main:
            save_config(cfg, self.path / "config.yaml", prov)

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
