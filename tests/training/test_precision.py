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
def test_explicit_precision_refused_with_reason(force, monkeypatch, cap, requested, error):
    monkeypatch.setattr(hw, "cpu_fp16_supported", lambda: False)  # as on a CPU without oneDNN fp16
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


# --- half precision through DeepSpeed's engine, per backbone family and text encoder ----------------------------

def _text_encoders(root) -> dict[str, str]:
    """Tiny random BERT / RoBERTa / MobileBERT saved like Hub checkpoints (the registry's text encoder families)."""
    from transformers import BertConfig, BertModel, MobileBertConfig, MobileBertModel, RobertaConfig, RobertaModel

    small = dict(vocab_size=100, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40)
    models = {"bert": BertModel(BertConfig(hidden_size=32, intermediate_size=64, **small)),
              "roberta": RobertaModel(RobertaConfig(hidden_size=32, intermediate_size=64, **small)),
              "mobilebert": MobileBertModel(MobileBertConfig(hidden_size=32, embedding_size=16, intermediate_size=32,
                                                             intra_bottleneck_size=16, true_hidden_size=16,
                                                             num_feedforward_networks=1, **small))}
    for name, model in models.items():
        model.save_pretrained(root / name)
    return {name: str(root / name) for name in models}


@pytest.fixture(scope="module")
def text_encoders(tmp_path_factory) -> dict[str, str]:
    return _text_encoders(tmp_path_factory.mktemp("text_encoders"))


def _half_step(backbone, text_encoder, precision, size=32):
    """One DeepSpeed training step and one evaluation forward of a fusion model; returns (engine, BN stats before)."""
    from engine.models import create_model
    from engine.models.config import ModelConfig
    from engine.training.distributed import init_distributed
    from engine.training.wrap import wrap_model

    dist = init_distributed()
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone=backbone, text_encoder=text_encoder, fusion_dim=16, text_max_length=8,
                                     text_pooling="mean"), 3, 1, [2])
    engine, _, _ = wrap_model(model, load_config(None, {"loader": {"batch_size": 4}}), dist.device, precision, 1, 4, 1e-2)
    dtype = hw.torch_dtype(precision)
    inputs = dict(images=torch.randn(4, 3, size, size, dtype=dtype) * 2 + 1, input_ids=torch.randint(2, 100, (4, 8)),
                  attention_mask=torch.ones(4, 8, dtype=torch.long), numeric=torch.randn(4, 1, dtype=dtype),
                  categorical=torch.zeros(4, 1, dtype=torch.long))
    before = {k: v.clone() for k, v in engine.module.state_dict().items()}
    engine.train()
    out = engine(**inputs)
    loss = torch.nn.functional.cross_entropy(out.logits.float(), torch.tensor([0, 1, 2, 0]))
    engine.backward(loss)
    engine.step()
    engine.eval()
    with torch.no_grad():
        logits = engine(**inputs).logits
    assert out.logits.dtype == logits.dtype == dtype and torch.isfinite(loss) and torch.isfinite(logits).all()
    return engine, before


def _check_half_module(engine, before, dtype):
    """Parameters in the training dtype, BatchNorm statistics fp32 and updated, every parameter Parameter again."""
    from torch import nn

    norms = [m for m in engine.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        assert isinstance(m.weight, nn.Parameter) and m.weight.dtype == dtype  # the hooks put the parameters back
        assert m.running_mean.dtype == m.running_var.dtype == torch.float32 and int(m.num_batches_tracked) == 1
    for name, p in engine.module.named_parameters():
        assert p.dtype == dtype, name
    after = engine.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k.endswith("weight")), "no step taken"
    if norms:
        assert any(not torch.equal(before[k], after[k]) for k in after if k.endswith("running_mean"))
    return norms


# One per family: torchvision BatchNorm2d, timm BatchNormAct2d (EfficientNet, DenseNet), ConvNeXt V2
# (LayerNorm2d, GRN), ViT (LayerNorm, attention, dynamic position embedding); timm's test_* nets are the same
# modules at a few hundred thousand parameters.
FAMILIES = [("resnet50", 32, True), ("test_efficientnet", 32, True), ("densenet121", 32, True),
            ("test_convnext2", 32, False), ("dinov2_vits14", 28, False), ("test_vit", 160, False)]


@pytest.mark.parametrize("backbone,size,has_bn", FAMILIES)
def test_bf16_step_every_backbone_family(backbone, size, has_bn, text_encoders):
    engine, before = _half_step(backbone, text_encoders["bert"], "bf16", size)
    assert bool(_check_half_module(engine, before, torch.bfloat16)) == has_bn


@pytest.mark.parametrize("text", ["bert", "roberta", "mobilebert"])
def test_bf16_step_every_text_encoder_family(text, text_encoders):
    engine, before = _half_step("test_resnet", text_encoders[text], "bf16")
    _check_half_module(engine, before, torch.bfloat16)


def test_batchnorm_statistics_under_bf16_match_fp32():
    """The running statistics accumulate in fp32 from bf16 activations: close to an fp32 module's, not bf16-rounded."""
    from torch import nn

    from engine.training.wrap import batchnorm_in_fp32

    torch.manual_seed(0)
    ref = nn.BatchNorm2d(8)
    half = nn.BatchNorm2d(8)
    half.weight.data, half.bias.data = half.weight.data.bfloat16(), half.bias.data.bfloat16()  # as DeepSpeed casts
    assert batchnorm_in_fp32(half) == 1 and batchnorm_in_fp32(half) == 0  # idempotent: stage switches re-wrap
    x = torch.randn(16, 8, 6, 6) * 3 + 100
    y = half(x.bfloat16())
    ref(x.bfloat16().float())
    assert y.dtype == torch.bfloat16 and half.running_mean.dtype == torch.float32
    torch.testing.assert_close(half.running_mean, ref.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(half.running_var, ref.running_var, rtol=1e-5, atol=1e-5)
    y.float().sum().backward()
    assert half.weight.grad.dtype == torch.bfloat16 and isinstance(half.weight, nn.Parameter)


def test_fp16_engine_steps_on_cpu_where_deepspeed_allows_it(monkeypatch, text_encoders):
    """DeepSpeed's fp16 engine (loss scaler included) runs on the CPU accelerator; DeepSpeed itself gates it on
    oneDNN fp16 (AVX512-FP16 / AMX-FP16), which this test fakes so the path is exercised on any CPU."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
    engine, before = _half_step("test_resnet", text_encoders["bert"], "fp16")
    _check_half_module(engine, before, torch.float16)
    assert "FP16" in type(engine.optimizer).__name__ and engine.optimizer.loss_scale == 2 ** 16  # dynamic, no overflow
