"""tools/gpu_check.sh and its new figure, tools/bench_decode.py, checked on CPU so they cannot break unseen before a
GPU runs them. The whole script's CPU smoke mode (SMOKE=1: every step tiny) takes minutes on 2 cores, so here it
is only listed (DRY_RUN=1); each step's own tool is tested in its own module (bench_augment, profile_throughput,
build_cache, train)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["data", "bf16_step", "pytest_gpu", "bench_augment", "bench_decode", "cache_dali", "profile", "two_rank"]


def _dry(tmp_path, **env) -> str:
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PYTHON": sys.executable, **env})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_script_parses():
    subprocess.run(["bash", "-n", "tools/gpu_check.sh"], cwd=ROOT, check=True)


def test_smoke_mode_lists_every_step_in_order(tmp_path):
    out = _dry(tmp_path, SMOKE="1")
    listed = [line.split()[2] for line in out.splitlines() if line.startswith("== DRY ")]
    assert listed == STEPS
    first = out[out.index("== bf16_step:"):out.index("== DRY bf16_step")].replace(str(Path(sys.executable).parent) + "/", "")
    assert "deepspeed --num_gpus 1 --master_port" in first and "engine/train.py" in first
    assert "--train.precision=bf16" in first and "--train.max_steps_per_epoch=1" in first


def test_gpu_mode_on_one_card_skips_only_the_two_rank_run(tmp_path):
    out = _dry(tmp_path)
    listed = [line.split()[2] for line in out.splitlines() if line.startswith("== DRY ")]
    assert listed == ["device"] + STEPS[:-1] and "== SKIP two_rank" in out  # this machine: no GPU
    assert "--device cuda" in out and "--cache.decoder=dali" in out and "--train.channels_last=true" in out


def test_bench_decode_rows_on_cpu(tmp_path):
    pytest.importorskip("nvidia.dali")
    from tests.data.conftest import write_dataset

    manifest = write_dataset(tmp_path / "data", n_train=4, n_val=0, n_test=0)
    out = tmp_path / "decode.json"
    proc = subprocess.run([sys.executable, "tools/bench_decode.py", "--manifest", str(manifest), "--size", "32",
                           "--limit", "4", "--device", "cpu", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["decoder"], r["variant"]) for r in rows] == [("pil", "draft"), ("pil", "full"), ("dali-cpu", "")]
    assert all(r["photos"] == 4 and r["errors"] == 0 and r["images_per_s"] > 0 for r in rows)
    from engine.data.cache.decode_dali import TOLERANCE

    assert rows[1]["mean_abs_vs_pil_full"] == 0 and rows[2]["mean_abs_vs_pil_full"] <= TOLERANCE["mean_abs_no_draft"]
