"""tools/profile_throughput.py on tiny data: the JSON schema, positive rates, the PNG, a bound per backend.

Timings are never checked (house rule 12); one profile run is shared by the tests of this module.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from engine.profiling import Profile, StageResult
from engine.profiling.report import advise

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["--data.image_size=32", "--cache.stored_size=40", "--cache.workers=1", "--loader.batch_size=4",
             "--loader.num_workers=2", "--model.text_max_length=8", "--model.backbone=resnet18"]


def _tool(name: str):
    """A tools/ script as a module (importable by name, so its functions pickle into worker processes)."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tiny demo data + its train cache, then one profile with an extra backend that cannot run."""
    from engine.config import load_config
    from engine.data.cache import build_cache
    from engine.data.context import DataContext
    from engine.data.loaders import LOADER_BACKENDS

    tmp = tmp_path_factory.mktemp("profile")
    manifest = _tool("make_demo_data").make_demo_data(tmp / "data", 16, 8, 8, workers=2)
    overrides = [f"--data.manifest={manifest}", f"--cache.dir={tmp / 'cache'}", *OVERRIDES]
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    build_cache(cfg, DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length), "train",
                progress=False)

    def broken(*args):
        raise RuntimeError("prerequisite missing")

    LOADER_BACKENDS["broken_for_test"] = broken
    try:
        rc = _tool("profile_throughput").main(["--config", str(ROOT / "configs" / "demo.yaml"), *overrides, "--steps", "2",
                                               "--repeats", "1", "--warmup", "1", "--torch-threads", "1",
                                               "--json", str(tmp / "p.json"), "--png", str(tmp / "p.png")])
    finally:
        del LOADER_BACKENDS["broken_for_test"]
    assert rc == 0
    return json.loads((tmp / "p.json").read_text()), tmp / "p.png", cfg


def test_json_schema(run):
    out, *_ = run
    assert isinstance(out["device"], str) and isinstance(out["precision"], str)
    assert out["batch_size"] == 4 and isinstance(out["cpu_count"], int) and out["cpu_count"] >= 1
    for s in out["stages"]:
        assert set(s) >= {"stage", "name", "images_per_s", "gb_per_s", "median_s", "repeats"}
        assert s["stage"] in ("read", "decode", "augment", "h2d", "model", "end_to_end")
        assert isinstance(s["name"], str) and isinstance(s["repeats"], int) and s["repeats"] >= 1
        assert s["gb_per_s"] is None or s["gb_per_s"] > 0
    assert out["model_images_per_s"] > 0
    assert isinstance(out["advice"], list) and out["advice"] and all(isinstance(a, str) for a in out["advice"])
    for e in out["end_to_end"].values():
        assert set(e) >= {"images_per_s", "ratio"} and e["ratio_bracketed"] > 0


def test_every_stage_reports_a_positive_rate(run):
    out, *_ = run
    measured = {s["stage"] for s in out["stages"]}
    assert measured >= {"read", "decode", "augment", "model", "end_to_end"}
    assert all(s["images_per_s"] > 0 and s["median_s"] > 0 for s in out["stages"])
    names = {(s["stage"], s["name"]) for s in out["stages"]}
    assert ("augment", "reference") in names
    assert any(st == "decode" and n.startswith("pil") and "workers" in n for st, n in names)


def test_end_to_end_covers_runnable_backends_and_skips_the_rest(run):
    out, *_ = run
    assert {"pil", "cache"} <= set(out["end_to_end"])
    assert all(e["ratio"] > 0 for e in out["end_to_end"].values())
    skipped = {(s["stage"], s["name"]): s["reason"] for s in out["skipped"]}
    assert "prerequisite missing" in skipped[("end_to_end", "broken_for_test")]
    if out["device"] == "cpu":
        assert ("augment", "triton") in skipped and ("h2d", "copy") in skipped


def test_verdict_names_a_bound_stage_per_backend(run):
    out, *_ = run
    labels = {f"{s['stage']}:{s['name']}" for s in out["stages"]}
    assert set(out["bound"]) == set(out["end_to_end"])
    assert all(b in labels for b in out["bound"].values())
    for backend in out["end_to_end"]:
        assert any(a.startswith(f"{backend}:") for a in out["advice"])


def test_png_is_written(run):
    _, png, _ = run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _profile(decode_rate: float, e2e: dict[str, float], model: float = 100.0) -> Profile:
    results = [StageResult("read", "cache", 50_000, 1.0, 0.01, 3, 32, ("cache",)),
               StageResult("decode", "pil 2 workers", decode_rate, 0.1, 1.0, 3, 32, ("pil",)),
               StageResult("augment", "reference", 5_000, 0.1, 0.01, 3, 32, ("cache",)),
               StageResult("model", "forward+backward+step", model, None, 0.3, 3, 32)]
    results += [StageResult("end_to_end", b, r, None, 0.3, 3, 32) for b, r in e2e.items()]
    return Profile("cpu", "fp32", 32, 8, results, settings={"num_workers": 2, "device_kind": "cpu", "stored_size": 80,
                                                            "image_size": 64, "torch_threads": 8, "prefetch": 2})


def test_advice_rules_follow_the_numbers():
    p = _profile(decode_rate=30, e2e={"pil": 25, "cache": 97})
    assert p.bound() == {"pil": "decode:pil 2 workers", "cache": "model:forward+backward+step"}
    pil, cache = advise(p)
    assert "more workers" in pil and "build_cache" in pil
    assert "model side" in cache
    # every stage alone is faster than the model, yet end to end lags: interference, not a slow stage
    (line,) = advise(_profile(decode_rate=500, e2e={"pil": 50}))
    assert "compete" in line


def test_dali_decode_is_measured_when_dali_backends_are_registered(run, monkeypatch):
    pytest.importorskip("nvidia.dali")
    from engine.data.loaders import LOADER_BACKENDS
    from engine.profiling.probes import Session, StageResult, _dali_decode

    monkeypatch.setitem(LOADER_BACKENDS, "dali", lambda *a: None)
    s = Session(run[2], steps=1, repeats=1, warmup=0)
    paths = s.ctx.split("train").paths[:8]
    got = {r.name: r for r in _dali_decode(s, paths, nbytes=8 * 1000)}
    assert isinstance(got["dali cpu"], StageResult) and got["dali cpu"].images_per_s > 0
    assert got["dali cpu"].feeds == (("dali",) if s.device.type == "cpu" else ())


def test_verdict_without_the_model_stage_reports_instead_of_crashing():
    from engine.profiling.report import verdict

    p = _profile(decode_rate=30, e2e={"pil": 25})
    p.results = [r for r in p.results if r.stage != "model"]
    text = verdict(p)
    assert "ratio n/a (no model stage)" in text
