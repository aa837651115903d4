"""The fused kernels compile with Triton's real NVIDIA backend, without a GPU.

The interpreter tests check what the kernels compute; this one checks that the
compiler proper (Triton -> PTX -> ptxas cubin) accepts them for the cards the
dispatcher sends to Triton (sm_80, sm_90), for every output dtype and layout,
specialised as a real launch would be, and reads the machine code: no variant
may spill registers to local memory (slow device-memory traffic in a kernel
whose whole budget is memory traffic), each pixel's 4 bilinear taps x 3
channels are gathered once, and NCHW outputs are written with vector stores.
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
STORE = {"float32": "STG.E.128", "float16": "STG.E.64", "bfloat16": "STG.E.64"}  # 4 pixels of one channel per thread


@pytest.fixture(autouse=True)
def _needs_triton_nvidia_tools():
    if not all((NVIDIA_BIN / tool).exists() for tool in ("ptxas", "cuobjdump")):
        pytest.skip(f"this Triton install ships no ptxas/cuobjdump in {NVIDIA_BIN}")


def test_kernels_compile_for_sm80_and_sm90_without_spills(tmp_path):
    from kernels.augment.triton_kernels import BLOCK

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    proc = subprocess.run([sys.executable, "-m", "kernels.augment.triton_aot", "--caps", "80", "90", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    augment = {(r["sm"], r["out"], r["layout"], r["mode"]): r for r in rows if r["kernel"] == "_augment_kernel"}
    assert set(augment) == {(sm, out, layout, mode) for sm in (80, 90) for out in STORE
                            for layout in ("nchw", "channels_last") for mode in ("train", "eval")}
    assert {r["sm"] for r in rows if r["kernel"] == "_gray_sum_kernel"} == {80, 90}
    spilled = [r for r in rows if r["local"] > 0]
    assert not spilled, f"register spills to local memory: {spilled}"
    for r in rows:
        pixels = BLOCK // (32 * r["num_warps"])  # per thread
        assert r["memory"].get("LDG.E.U8") == 12 * pixels, r  # 4 taps x 3 channels, each gathered once
    for (_sm, out, layout, _mode), r in augment.items():
        if layout == "nchw":
            assert r["memory"].get(STORE[out]) == 3, r  # one vector store per channel plane
            assert not any(k.startswith("STG") and k != STORE[out] for k in r["memory"]), r


def test_refuses_to_run_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "kernels.augment.triton_aot", "--caps", "80"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unset TRITON_INTERPRET" in proc.stderr
