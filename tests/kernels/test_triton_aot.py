"""The fused kernels compile with Triton's real NVIDIA backend, without a GPU.

The interpreter tests check what the kernels compute; this one checks that the
compiler proper (Triton -> PTX -> ptxas cubin) accepts them for the cards the
dispatcher sends to Triton (sm_80, sm_90), for every output dtype, and that no
variant spills registers to local memory (a spill is slow device-memory
traffic in a kernel whose whole budget is memory traffic).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.fixture(autouse=True)
def _needs_triton_nvidia_tools():
    if not all((NVIDIA_BIN / tool).exists() for tool in ("ptxas", "cuobjdump")):
        pytest.skip(f"this Triton install ships no ptxas/cuobjdump in {NVIDIA_BIN}")


def test_kernels_compile_for_sm80_and_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    proc = subprocess.run([sys.executable, "-m", "kernels.augment.triton_aot", "--caps", "80", "90", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    compiled = {(r["kernel"], r["sm"], r["out"], r["mode"]) for r in rows}
    for sm in (80, 90):
        for out in ("float32", "float16", "bfloat16"):
            assert {("_augment_kernel", sm, out, "train"), ("_augment_kernel", sm, out, "eval"),
                    ("_gray_sum_kernel", sm, out, "train")} <= compiled
    spilled = [r for r in rows if r["local"] > 0]
    assert not spilled, f"register spills to local memory: {spilled}"


def test_refuses_to_run_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "kernels.augment.triton_aot", "--caps", "80"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unset TRITON_INTERPRET" in proc.stderr
