"""Runs are never silently lost or overwritten, and a run folder cannot run code: each test failed before #17.

In-process tiny runs (2 updates per epoch) on the flash cache of ``tiny_overrides``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from engine.errors import CheckpointError, RunFolderError
from engine.training import loop
from engine.training.checkpoint import peek_state


def make_cfg(tiny_overrides, out: Path, name: str, *extra: str):
    return load_config("configs/demo.yaml", [*tiny_overrides, f"--run.output_dir={out}", f"--run.name={name}", *extra])


def files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_new_run_never_replaces_an_old_one(tiny_overrides, tmp_path):
    cfg = make_cfg(tiny_overrides, tmp_path, "r")
    loop.train(cfg)
    before = files(cfg.run_dir)
    with pytest.raises(RunFolderError, match=r"already holds a run.*--resume.*--run\.name="):
        loop.train(cfg)
    assert files(cfg.run_dir) == before  # checkpoints, metrics.jsonl, summary.json and config.yaml untouched

    aside = make_cfg(tiny_overrides, tmp_path, "r", "--run.existing=keep_aside")
    loop.train(aside)
    (moved,) = tmp_path.glob("r.prev-*")
    assert {p.relative_to(moved): b for p, b in files(moved).items()} == \
           {p.relative_to(cfg.run_dir): b for p, b in before.items()}
    assert (cfg.run_dir / "summary.json").exists()


def test_refused_resume_keeps_the_run_config_and_names_the_keys(tiny_overrides, tmp_path):
    from tools.evaluate import evaluate_run

    cfg = make_cfg(tiny_overrides, tmp_path, "r", "--train.epochs=2")
    loop.train(cfg, stop_after_epoch=1)
    config_yaml = (cfg.run_dir / "config.yaml").read_bytes()
    changed = make_cfg(tiny_overrides, tmp_path, "r", "--train.epochs=2", "--model.fusion_dim=48", "--model.fusion=gated")
    with pytest.raises(CheckpointError, match=r"model\.fusion: 'concat' in the checkpoint, 'gated' now; "
                                              r"model\.fusion_dim: 32 in the checkpoint, 48 now"):
        loop.train(changed, resume=True)
    assert (cfg.run_dir / "config.yaml").read_bytes() == config_yaml

    # config.yaml rewritten by hand (or by an older version of this engine) no longer fools evaluate.py
    text = config_yaml.decode().replace(str(cfg.data.manifest), "/elsewhere/manifest.csv")
    (cfg.run_dir / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match=r"does not describe checkpoint 'last'.*data\.manifest"):
        evaluate_run(cfg.run_dir, "val", "last")


def test_a_resume_refused_after_start_up_keeps_config_yaml(tiny_overrides, tmp_path):
    from engine.config import ConfigError

    cfg = make_cfg(tiny_overrides, tmp_path, "r", "--train.epochs=2", "--train.checkpoint_every_steps=1")
    loop.train(cfg, stop_after_step=1)  # killed mid-epoch
    config_yaml = (cfg.run_dir / "config.yaml").read_bytes()
    other = make_cfg(tiny_overrides, tmp_path, "r", "--train.epochs=2", "--train.checkpoint_every_steps=1",
                     "--loader.batch_size=4")
    with pytest.raises(ConfigError, match="cannot resume mid-epoch"):  # found once the loaders exist
        loop.train(other, resume=True)
    assert (cfg.run_dir / "config.yaml").read_bytes() == config_yaml


def test_resume_finds_a_checkpoint_left_between_the_two_renames(tiny_overrides, tmp_path):
    cfg = make_cfg(tiny_overrides, tmp_path, "r", "--train.epochs=2")
    loop.train(cfg, stop_after_epoch=1)
    ckpt = cfg.run_dir / "checkpoints"
    shutil.copytree(ckpt / "last", ckpt / "last.partial")  # the next save, complete but never renamed
    (ckpt / "last").rename(ckpt / "last.old")  # killed right after the first rename
    assert peek_state(ckpt, "last").epoch == 1
    summary = loop.train(cfg, resume=True)
    assert summary["epochs"] == 2 and peek_state(ckpt, "last").epoch == 2
    assert sorted(p.name for p in ckpt.iterdir()) == ["best", "last"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1472 vs 1366")],
                         ids=["ENOSPC", "inline_container"])
def test_full_disk_while_saving_says_so_and_keeps_the_previous_checkpoint(tiny_overrides, tmp_path, monkeypatch, error):
    cfg = make_cfg(tiny_overrides, tmp_path, "r", "--train.epochs=2")
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if loop_epoch["n"] >= 2:  # every save of epoch 2 finds the disk full
            raise error
        return real_save(obj, f, *args, **kwargs)

    loop_epoch = {"n": 0}
    real_epoch = loop.train_epoch

    def counting_epoch(*args, **kwargs):
        loop_epoch["n"] += 1
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(loop, "train_epoch", counting_epoch)
    with pytest.raises(CheckpointError, match=r"no space left on the device while saving checkpoint '(best|last)' in "
                                              rf"{cfg.run_dir / 'checkpoints'}/(best|last)\.partial.*is kept"):
        loop.train(cfg)
    ckpt = cfg.run_dir / "checkpoints"
    assert peek_state(ckpt, "last").epoch == 1 and not list(ckpt.glob("*.partial"))
    monkeypatch.setattr(torch, "save", real_save)
    assert loop.train(cfg, resume=True)["epochs"] == 2


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint file can do under weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("victim", ["rng_rank0.pt", "mp_rank_00_model_states.pt"])
def test_a_crafted_checkpoint_file_is_refused_not_run(tiny_overrides, tmp_path, victim):
    cfg = make_cfg(tiny_overrides, tmp_path, "r", "--train.epochs=2")
    loop.train(cfg, stop_after_epoch=1)
    last = cfg.run_dir / "checkpoints" / "last"
    torch.load(last / "rng_rank0.pt", weights_only=True)  # our own RNG file needs no unsafe types at all
    marker = tmp_path / "pwned"
    torch.save({"python": _Payload(marker)}, last / victim)
    with pytest.raises(CheckpointError, match=rf"refusing to load .*{victim}.*weights_only"):
        loop.train(cfg, resume=True)
    assert not marker.exists()


def test_checkpoints_keep_their_config(tiny_overrides, tmp_path):
    cfg = make_cfg(tiny_overrides, tmp_path, "r")
    loop.train(cfg)
    for tag in ("best", "last"):
        saved = json.loads((cfg.run_dir / "checkpoints" / tag / "config.json").read_text())
        assert saved["model"] == json.loads(json.dumps(cfg.to_dict()["model"]))
