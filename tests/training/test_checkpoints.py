"""What a checkpoint tag holds and which layouts resume it.

``best`` is weights only by default (model.safetensors), ``last`` DeepSpeed's full, resumable files; a ZeRO-1/2
``last`` written by two ranks resumes on one, its optimizer state re-partitioned through DeepSpeed's universal
checkpoint; what cannot resume is refused before DeepSpeed starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.errors import RunFolderError
from engine.training import loop
from engine.training.checkpoint import _safe_globals, read_layout
from tests.training.conftest import deepspeed_cmd, module_weights
from tests.training.test_runs import make_cfg, records

ZERO_ARGS = ["--train.epochs=2", "--optim.lr=0.003", "--loader.batch_size=4", "--train.max_steps_per_epoch=2"]


def consolidated_optimizer_state(last: Path, world: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per parameter name, its fp32 master weights and Adam moments, glued from the ZeRO shards of ``world`` ranks
    (each rank's flat partition holds fragments of the parameters, in rank order: the test's own reading)."""
    pieces: dict[str, dict[str, list]] = {}
    for r in range(world):
        with torch.serialization.safe_globals(_safe_globals()):
            sd = torch.load(last / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", weights_only=True)
        opt = sd["optimizer_state_dict"]
        for g, mapping in enumerate(opt["param_slice_mappings"]):
            flat = {"fp32": opt["single_partition_of_fp32_groups"][g], **{
                k: opt["base_optimizer_state"]["state"][g][k] for k in ("exp_avg", "exp_avg_sq")}}
            for name, frag in mapping.items():
                for key, tensor in flat.items():
                    pieces.setdefault(name, {}).setdefault(key, []).append(tensor.narrow(0, frag.start, frag.numel))
    return {name: {k: torch.cat(v) for k, v in parts.items()} for name, parts in pieces.items()}


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_checkpoint_of_two_ranks_resumes_on_one(tiny_overrides, tmp_path, monkeypatch, zero):
    """Saved by 2 ranks under ZeRO-``zero`` at an epoch's end, resumed by 1: every parameter's fp32 weights and
    Adam moments arrive whole (they were split across the two ranks' shards), and the run trains on to its end."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    common = [*tiny_overrides, f"--run.output_dir={tmp_path}", "--run.name=z", f"--deepspeed.zero_stage={zero}", *ZERO_ARGS]
    deepspeed_cmd(2, "engine/train.py", "--config", "configs/demo.yaml", *common, "--stop-after-epoch=1")
    run = tmp_path / "z"
    assert read_layout(run / "checkpoints", "last").world_size == 2
    expected = consolidated_optimizer_state(run / "checkpoints" / "last", 2)

    loaded = {}
    real = loop.train_epoch

    def spy(engine, *args, **kwargs):  # the first epoch after the resume: the state as loaded
        if not loaded:
            for name, p in engine.module.named_parameters():
                if p.requires_grad:
                    loaded[name] = {"fp32": safe_get_full_fp32_param(p).flatten(),
                                    **{k: safe_get_full_optimizer_state(p, k).flatten() for k in ("exp_avg", "exp_avg_sq")}}
        return real(engine, *args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", spy)
    summary = loop.train(make_cfg(tiny_overrides, tmp_path, "z", f"--deepspeed.zero_stage={zero}", *ZERO_ARGS), resume=True)
    assert loaded.keys() == expected.keys()
    different = [(n, k) for n in expected for k in expected[n] if not torch.equal(loaded[n][k], expected[n][k])]
    assert not different, different[:5]
    assert any(expected[n]["exp_avg_sq"].abs().sum() > 0 for n in expected)  # trained moments, not fresh zeros
    assert summary["epochs"] == 2 and [r["epoch"] for r in records(run)] == [1, 2]
    assert read_layout(run / "checkpoints", "last").world_size == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.endswith(".py")) == ["best", "last"]


def test_best_is_weights_only_and_what_cannot_resume_is_refused(tiny_overrides, tmp_path):
    """best: model.safetensors (and the state and config files), no DeepSpeed file; its weights are the best epoch's.
    checkpoint_best=full keeps DeepSpeed's files; checkpoint_last=weights is refused on --resume before any start."""
    cfg = make_cfg(tiny_overrides, tmp_path, "w", "--train.epochs=1")
    loop.train(cfg)
    best, last = cfg.run_dir / "checkpoints" / "best", cfg.run_dir / "checkpoints" / "last"
    assert sorted(p.name for p in best.iterdir()) == ["config.json", "layout.json", "model.safetensors", "train_state.json"]
    assert json.loads((best / "layout.json").read_text())["kind"] == "weights"
    a, b = module_weights(cfg.run_dir, "best"), module_weights(cfg.run_dir, "last")  # one epoch: the same weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    weights = (best / "model.safetensors").stat().st_size
    full = sum(p.stat().st_size for p in last.iterdir())
    assert full > 2.5 * weights  # AdamW: weights + fp32 master copy's two moments

    cfg = make_cfg(tiny_overrides, tmp_path, "f", "--train.epochs=1", "--train.checkpoint_best=full",
                   "--train.checkpoint_last=weights")
    loop.train(cfg)
    assert (cfg.run_dir / "checkpoints" / "best" / "mp_rank_00_model_states.pt").is_file()
    assert (cfg.run_dir / "checkpoints" / "last" / "model.safetensors").is_file()
    with pytest.raises(RunFolderError, match=r"--resume: .*last holds the model's weights only"):
        loop.train(make_cfg(tiny_overrides, tmp_path, "f", "--train.epochs=2"), resume=True)



@pytest.mark.parametrize("layout, world, zero, message", [
    ({"world_size": 2, "zero_stage": 1, "shared_fs": False}, 1, 1,
     r"--resume on 1 rank\(s\): .*last was saved by 2 ranks with ZeRO-1, .*2 are not here .*each node's disk holds its "
     r"own ranks' shards.*Copy every node's last/zero_pp_rank_\* files into it, or resume on 2 ranks"),
    ({"world_size": 2, "zero_stage": 0, "mid_epoch": True}, 3, 0, r"saved inside an epoch by 2 ranks.*resume on 2 ranks"),
    ({"world_size": 1, "zero_stage": 2}, 1, 0, r"saved with ZeRO stage 2, this run has stage 0; resume with "
                                               r"--deepspeed.zero_stage=2"),
], ids=["zero-shards-on-other-nodes", "mid-epoch-other-world", "other-zero-stage"])
def test_a_checkpoint_this_launch_cannot_resume_is_refused_before_deepspeed(tmp_path, monkeypatch, layout, world, zero,
                                                                            message):
    from engine.config import load_config
    from engine.training.run_dir import check_run_folder

    last = tmp_path / "r" / "checkpoints" / "last"
    last.mkdir(parents=True)
    (last / "train_state.json").write_text(json.dumps({"epoch": 1}))
    (last / "layout.json").write_text(json.dumps(layout))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = load_config("configs/demo.yaml", [f"--run.output_dir={tmp_path}", "--run.name=r", f"--deepspeed.zero_stage={zero}"])
    with pytest.raises(RunFolderError, match=message):
        check_run_folder(cfg, resume=True)
    if layout["zero_stage"] == zero:  # on the saving world size (and so from any point), resumable as it is
        (last / "layout.json").write_text(json.dumps({**layout, "world_size": world}))
        check_run_folder(cfg, resume=True)
