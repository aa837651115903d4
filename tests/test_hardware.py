import os

import pytest

from engine import hardware as hw

CARDS = {"cpu": "cpu", "6.1": "pascal", "7.0": "volta_turing", "7.5": "volta_turing", "8.0": "ampere_hopper",
         "9.0": "ampere_hopper"}


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


def test_explicit_precision_honoured(force, monkeypatch):
    monkeypatch.setattr(hw, "cpu_fp16_supported", lambda: False)  # this CI's CPU; test_fp16_on_cpu_... covers both
    assert hw.choose_precision(force("8.0"), "fp32") == "fp32"
    assert hw.choose_precision(force("6.1"), "fp16") == "fp16"
    with pytest.raises(ValueError, match="fp16 refused on CPU"):
        hw.choose_precision(force("cpu"), "fp16")


@pytest.mark.parametrize("cap,expected", [("cpu", "reference"), ("6.1", "reference"), ("7.5", "reference"),
                                          ("8.0", "triton"), ("9.0", "triton")])
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


# --- does the installed torch have kernels for the card? ---------------------------------------------------------

CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130, what `make install` pins
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]  # PyTorch's CUDA 12.6 wheels


@pytest.mark.parametrize("cap,cu130,cu126", [("6.1", False, True), ("7.0", False, True), ("8.0", True, True),
                                             ("9.0", True, True)])
def test_torch_kernels_per_card(force, cap, cu130, cu126):
    info = force(cap)
    for archs, runs in ((CU130, cu130), (CU126, cu126)):
        if runs:
            hw.check_torch_kernels(info, archs)
            continue
        with pytest.raises(hw.UnsupportedDeviceError) as e:
            hw.check_torch_kernels(info, archs)
        message = str(e.value)
        assert f"sm_{cap.replace('.', '')}" in message and f"capability {cap}" in message  # the card
        assert "make install TORCH_INDEX=cu126" in message and "download.pytorch.org/whl/cu126" in message  # the fix
        assert "sm_75, sm_80" in message  # what the installed torch has


@pytest.mark.parametrize("arch,cap,runs", [
    ("sm_60", (6, 1), True),  # same major, lower minor: binary compatible
    ("sm_61", (6, 0), False),
    ("sm_80", (8, 6), True),
    ("sm_80", (9, 0), False),  # an sm_80 binary does not run on Hopper
    ("compute_80", (9, 0), True),  # PTX is JIT-compiled for any later card
    ("compute_90", (8, 0), False),
    ("sm_90a", (9, 0), True),
    ("sm_90a", (10, 0), False),
    ("sm_100", (10, 3), True),
    ("sm_120", (12, 1), True),
    ("gibberish", (8, 0), False),
])
def test_cuda_binary_compatibility_rules(arch, cap, runs):
    assert hw.arch_runs_on(arch, cap) is runs


def test_ptx_lets_a_newer_card_start(force):
    hw.check_torch_kernels(force("9.0"), ["sm_70", "sm_80", "compute_80"])
    with pytest.raises(hw.UnsupportedDeviceError, match="sm_90") as e:
        hw.check_torch_kernels(force("9.0"), ["sm_70", "sm_80"])
    assert "TORCH_INDEX" not in str(e.value)  # not an old card: cu126 is not the fix


def test_arch_list_forced_by_environment(force, monkeypatch):
    """ENGINE_FORCE_ARCH_LIST fakes torch.cuda.get_arch_list() (subprocess tests); nothing is checked on CPU."""
    monkeypatch.setenv(hw.FORCE_ARCH_ENV, ",".join(CU130))
    assert hw.torch_arch_list() == CU130
    force("6.1")
    with pytest.raises(hw.UnsupportedDeviceError):
        hw.check_local_card()  # forced to the card below
    hw.check_local_card(CU126)
    hw.check_torch_kernels(force("cpu"), [])
    hw.check_torch_kernels(force("7.0"), [])  # torch without CUDA code: nothing to compare with


def test_fp16_on_cpu_follows_deepspeeds_onednn_test(force, monkeypatch):
    info = force("cpu")
    monkeypatch.setattr(hw, "cpu_fp16_supported", lambda: True)
    assert hw.choose_precision(info, "fp16") == "fp16"
    monkeypatch.setattr(hw, "cpu_fp16_supported", lambda: False)
    with pytest.raises(ValueError, match="fp16 refused on CPU without oneDNN fp16"):
        hw.choose_precision(info, "fp16")
