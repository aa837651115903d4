import os

import pytest

from engine import hardware as hw

CARDS = {"cpu": "cpu", "6.1": "pascal", "7.0": "volta_turing", "7.5": "volta_turing", "8.0": "ampere_hopper", "9.0": "ampere_hopper"}


@pytest.fixture
def force(monkeypatch):
    def _force(cap):
        monkeypatch.setenv(hw.FORCE_ENV, cap)
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        return hw.device_info()

    return _force


@pytest.mark.parametrize("cap,family", CARDS.items())
def test_family(force, cap, family):
    assert force(cap).family == family


@pytest.mark.parametrize("cap,expected", [("cpu", "fp32"), ("6.1", "fp32"), ("7.0", "fp16"), ("8.0", "bf16"), ("9.0", "bf16")])
def test_auto_precision(force, cap, expected):
    assert hw.choose_precision(force(cap)) == expected


@pytest.mark.parametrize("cap", ["6.1", "7.0", "7.5"])
def test_bf16_refused_before_ampere(force, cap):
    with pytest.raises(ValueError, match="bf16 refused"):
        hw.choose_precision(force(cap), "bf16")


def test_explicit_precision_honoured(force):
    assert hw.choose_precision(force("8.0"), "fp32") == "fp32"
    assert hw.choose_precision(force("6.1"), "fp16") == "fp16"
    with pytest.raises(ValueError, match="fp16 refused on CPU"):
        hw.choose_precision(force("cpu"), "fp16")


@pytest.mark.parametrize("cap,expected", [("cpu", "reference"), ("6.1", "reference"), ("7.5", "reference"), ("8.0", "triton"), ("9.0", "triton")])
def test_augment_dispatch(force, cap, expected):
    assert hw.choose_augment_impl(force(cap)) == expected


def test_triton_forced_on_pascal_refused(force):
    with pytest.raises(ValueError, match="sm_80"):
        hw.choose_augment_impl(force("6.1"), "triton")


def test_triton_on_cpu_needs_interpreter(force, monkeypatch):
    info = force("cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        hw.choose_augment_impl(info, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert hw.choose_augment_impl(info, "triton") == "triton"


@pytest.mark.parametrize("cap,hw_load", [("6.1", 0.0), ("7.5", 0.0), ("8.0", 0.75), ("8.6", 0.0), ("9.0", 0.75)])
def test_dali_hw_decoder_only_on_a100_h100(force, cap, hw_load):
    assert hw.dali_decoder_defaults(force(cap))["hw_decoder_load"] == hw_load


def test_bad_forced_value(monkeypatch):
    monkeypatch.setenv(hw.FORCE_ENV, "eight")
    with pytest.raises(ValueError, match=hw.FORCE_ENV):
        hw.device_info()


def test_engine_import_puts_large_cpu_tensors_on_huge_pages_by_default():
    """``import engine`` (done by every entry point before torch) defaults THP_MEM_ALLOC_ENABLE=1; an explicit value wins."""
    import subprocess
    import sys

    code = "import os, engine; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "1"
    env["THP_MEM_ALLOC_ENABLE"] = "0"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "0"
