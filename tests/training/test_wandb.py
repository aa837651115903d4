"""train.wandb_*: project, entity, group, tags and mode reach wandb.init; --resume continues the same W&B run."""
import importlib.machinery
import sys
import types

from engine.config import load_config
from engine.training.monitor import Monitor


def fake_wandb(monkeypatch):
    calls = []
    mod = types.ModuleType("wandb")
    mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    mod.util = types.SimpleNamespace(generate_id=lambda: f"id{len(calls)}")
    mod.init = lambda **kw: calls.append(kw) or types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return calls


def test_wandb_settings_reach_init_and_resume_keeps_the_id(monkeypatch, tmp_path):
    calls = fake_wandb(monkeypatch)
    cfg = load_config(None, ["--train.tensorboard=false", "--train.wandb=true", "--train.wandb_project=bakeoff",
                             "--train.wandb_entity=team", "--train.wandb_group=sweep1", "--train.wandb_tags=[a,b]",
                             "--train.wandb_mode=offline", "--run.name=v1"])
    Monitor(cfg, tmp_path, is_main=True).close()
    kw = calls[0]
    assert (kw["project"], kw["entity"], kw["group"], kw["tags"], kw["mode"], kw["name"]) == \
        ("bakeoff", "team", "sweep1", ["a", "b"], "offline", "v1")
    Monitor(cfg, tmp_path, is_main=True, resume=True).close()
    assert calls[1]["id"] == kw["id"] and calls[1]["resume"] == "allow"
    Monitor(cfg, tmp_path, is_main=False).close()  # other ranks never log
    assert len(calls) == 2
