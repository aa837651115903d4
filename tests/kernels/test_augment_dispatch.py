"""Augmenter follows engine.hardware's policy, logs it once, and never needs triton for the reference."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import hardware
from kernels import AugmentConfig, Augmenter
from kernels.augment.reference import position_atol


@pytest.mark.parametrize("cap,expected", [("cpu", "reference"), ("6.1", "reference"), ("7.5", "reference"),
                                          ("8.0", "triton"), ("9.0", "triton")])
def test_augmenter_follows_capability(monkeypatch, caplog, cap, expected):
    monkeypatch.setenv(hardware.FORCE_ENV, cap)
    with caplog.at_level(logging.INFO, logger="kernels"):
        aug = Augmenter(AugmentConfig(), 16, seed=0)
    assert aug.impl == expected
    msgs = [r.getMessage() for r in caplog.records if r.name == "kernels"]
    assert len(msgs) == 1 and expected in msgs[0]


def test_forced_impl_refused_on_pascal(monkeypatch):
    monkeypatch.setenv(hardware.FORCE_ENV, "6.1")
    with pytest.raises(ValueError, match="sm_80"):
        Augmenter(AugmentConfig(impl="triton"), 16, seed=0)


def test_triton_impl_runs_under_interpreter():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("compiled kernels here (conftest.py): covered by test_augment_triton")
    x = torch.randint(0, 256, (2, 20, 20, 3), dtype=torch.uint8)
    ids = torch.arange(2)
    tri = Augmenter(AugmentConfig(impl="triton"), 12, seed=0, device="cpu")
    ref = Augmenter(AugmentConfig(impl="reference"), 12, seed=0, device="cpu")
    assert tri.impl == "triton"
    tol = dict(rtol=1e-5, atol=position_atol(20))  # the reference's float32 grid coordinates, see reference.py
    torch.testing.assert_close(tri.train(x, ids, 0), ref.train(x, ids, 0), **tol)
    torch.testing.assert_close(tri.eval(x), ref.eval(x), **tol)


def test_import_and_reference_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, kernels\n"
            "a = kernels.Augmenter(kernels.AugmentConfig(), 8, 0, impl='reference')\n"
            "print(a.train(torch.zeros(1, 10, 10, 3, dtype=torch.uint8), torch.arange(1), 0).shape)\n"
            "try:\n    kernels.apply_triton(None, None, 8, (0,)*3, (1,)*3)\n"
            "except ImportError as e:\n    assert 'pip install triton' in str(e)\nelse:\n    raise SystemExit('no error')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr


def test_rejects_wrong_input():
    aug = Augmenter(AugmentConfig(), 8, 0, impl="reference")
    with pytest.raises(ValueError, match="uint8 NHWC"):
        aug.train(torch.zeros(1, 3, 10, 10), torch.arange(1), 0)
