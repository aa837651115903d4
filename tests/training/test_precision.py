"""What the trainer does with the precision policy on each card (forced with ENGINE_FORCE_CAPABILITY)."""
import pytest
import torch

from engine import hardware as hw
from engine.config import load_config
from engine.training.wrap import deepspeed_config

CARDS = [("cpu", "fp32", False), ("6.1", "fp32", False), ("7.0", "fp16", True), ("8.0", "bf16", True), ("9.0", "bf16", True)]


@pytest.fixture
def force(monkeypatch):
    def _force(cap):
        monkeypatch.setenv(hw.FORCE_ENV, cap)
        return hw.device_info()

    return _force


@pytest.mark.parametrize("cap,precision,channels_last", CARDS)
def test_deepspeed_config_follows_card(force, cap, precision, channels_last):
    info = force(cap)
    chosen = hw.choose_precision(info, "auto")
    assert chosen == precision
    ds = deepspeed_config(load_config(None), chosen, world=1)
    assert ds["bf16"]["enabled"] == (precision == "bf16")
    assert ds["fp16"]["enabled"] == (precision == "fp16")
    if precision == "fp16":  # dynamic loss scaling
        assert ds["fp16"]["loss_scale"] == 0
    assert hw.torch_dtype(chosen) == {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert hw.use_channels_last(info) == channels_last
    assert hw.use_channels_last(info, False) is False  # an explicit choice wins
    assert hw.compile_supported(info) == (cap != "6.1")
    assert hw.fused_adam_available(info) == (cap != "cpu")


@pytest.mark.parametrize("cap,requested,error", [("6.1", "bf16", "bf16 refused"), ("7.0", "bf16", "bf16 refused"),
                                                 ("cpu", "fp16", "fp16 refused on CPU")])
def test_explicit_precision_refused_with_reason(force, cap, requested, error):
    with pytest.raises(ValueError, match=error):
        hw.choose_precision(force(cap), requested)


@pytest.mark.parametrize("cap,requested", [("8.0", "fp16"), ("9.0", "fp32"), ("6.1", "fp16"), ("cpu", "bf16")])
def test_explicit_precision_honoured(force, cap, requested):
    assert hw.choose_precision(force(cap), requested) == requested


def test_inputs_cast_in_one_place():
    """DevicePipe casts images and numeric features to the training dtype; ids and labels stay integers."""
    from engine.data.batch import Batch
    from engine.training.step import DevicePipe

    cfg = load_config(None)
    b = 2
    fields = dict(images=torch.rand(b, 3, 8, 8), input_ids=torch.zeros(b, 4, dtype=torch.long),
                  attention_mask=torch.ones(b, 4, dtype=torch.long), numeric=torch.rand(b, 1),
                  categorical=torch.zeros(b, 1, dtype=torch.long), labels=torch.tensor([0, 1]),
                  index=torch.tensor([0, 1]))
    batch = Batch(**fields)
    inputs, targets, _ = DevicePipe(cfg, torch.device("cpu"), torch.bfloat16, channels_last=True)(batch, False, 0, 2)
    assert inputs["images"].dtype == torch.bfloat16 and inputs["numeric"].dtype == torch.bfloat16
    assert inputs["images"].is_contiguous(memory_format=torch.channels_last)
    assert targets.dtype == torch.long and inputs["input_ids"].dtype == torch.long
