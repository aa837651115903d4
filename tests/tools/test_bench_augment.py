"""tools/bench_augment.py's device half, run on CPU at tiny sizes so it cannot break unseen before a GPU runs it.

The CPU stands in for the device (Triton in its interpreter): the rows, the floor arithmetic and the
step share are checked, never the timings (house rule 12).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_device_rows_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "tools/bench_augment.py", "--skip-host", "--device", "cpu", "--batch", "2", "--in-size", "20",
           "--out-size", "12", "--repeats", "1", "--model", "resnet18", "--copy-mib", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    kernels = [r for r in rows if r["part"] == "kernel"]
    assert {(r["impl"], r["dtype"], r["layout"]) for r in kernels} == {
        (impl, dtype, layout) for impl in ("triton", "reference")
        for dtype, layout in (("bfloat16", "channels_last"), ("bfloat16", "nchw"), ("float32", "nchw"))}
    for r in kernels:  # floor = copy bandwidth / (input bytes + output bytes) per image
        out_bytes = 3 * 12 * 12 * (2 if r["dtype"] == "bfloat16" else 4)
        assert r["floor_images_per_s"] == pytest.approx(r["copy_gb_per_s"] * 1e9 / (20 * 20 * 3 + out_bytes))
        assert r["of_floor"] == pytest.approx(r["images_per_s"] / r["floor_images_per_s"])
    (step,) = [r for r in rows if r["part"] == "Augmenter.train"]
    assert step["impl"] == "reference" and step["model"] == "resnet18"  # what the dispatcher picks on CPU
    assert step["share_of_step"] == pytest.approx(step["ms_per_batch"] / (step["ms_per_batch"] + step["step_ms"]))
    assert "of the step" in proc.stdout and "of floor" in proc.stdout
