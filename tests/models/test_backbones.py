import copy

import pytest
import torch
from torch import nn

from engine.models.backbones import (
    BACKBONES,
    PretrainedWeightsError,
    backbone_layer_ids,
    create_backbone,
    keep_norm_statistics_on_recompute,
)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_builds_with_declared_feature_size(name):
    spec = BACKBONES[name]
    model, dim = create_backbone(name, pretrained=False)
    assert dim == spec.feature_dim
    size = 2 * spec.size_multiple if spec.size_multiple < 32 else 64
    model.eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, size, size))
    assert feats.shape == (2, dim)
    ids, num_layers = backbone_layer_ids(model)
    assert set(ids) == {n for n, _ in model.named_parameters()}
    assert num_layers > 1 and set(ids.values()) <= set(range(num_layers))


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="convnextv2_tiny") as e:
        create_backbone("resnet5O")
    assert "resnet5O" in str(e.value)


def test_raw_timm_name_passes_through():
    model, dim = create_backbone("test_resnet")
    assert dim == model.num_features


def test_resnet50_is_torchvisions_model():
    import torchvision

    reference = torchvision.models.resnet50()
    ours, dim = create_backbone("resnet50")
    assert dim == 2048
    expected_keys = [k for k in reference.state_dict() if not k.startswith("fc.")]
    assert list(ours.state_dict()) == expected_keys
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), reference.eval()(x))


def test_local_checkpoint_loads(tmp_path):
    source, _ = create_backbone("resnet18")
    # wrapped and prefixed like a DDP training checkpoint, with the source classifier still in it
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 512)
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    loaded, _ = create_backbone("resnet18", pretrained_path=str(tmp_path / "ckpt.pth"))
    for (k, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_local_checkpoint_mismatch_names_keys(tmp_path):
    source, _ = create_backbone("resnet18")
    state = source.state_dict()
    state.pop("layer4.1.bn2.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError, match="layer4.1.bn2.weight") as e:
        create_backbone("resnet18", pretrained_path=str(tmp_path / "bad.pth"))
    assert "extra.weight" in str(e.value)


def test_offline_pretrained_request_fails_clearly():
    with pytest.raises(PretrainedWeightsError) as e:
        create_backbone("resnet18", pretrained=True)
    message = str(e.value)
    assert "resnet18.a1_in1k" in message and "model.pretrained_path" in message


def test_offline_torchvision_pretrained_fails_clearly():
    from pathlib import Path

    from torchvision.models import ResNet50_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / ResNet50_Weights.IMAGENET1K_V2.url.rsplit("/", 1)[1]
    if cached.exists():
        pytest.skip("torchvision weights are cached on this machine")
    with pytest.raises(PretrainedWeightsError, match="model.pretrained_path"):
        create_backbone("resnet50", pretrained=True)


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["resnet50", "test_resnet"])  # torchvision and timm paths
def test_grad_checkpointing_gives_same_gradients(name):
    torch.manual_seed(0)
    plain, _ = create_backbone(name)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    expected, got = _grads(plain.train(), x), _grads(checkpointed.train(), x)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])  # ours (torchvision) and timm's checkpoint_seq
def test_grad_checkpointing_leaves_batchnorm_statistics_as_without_it(name):
    """The recompute in backward must not update running statistics a second time."""
    torch.manual_seed(0)
    plain, _ = create_backbone(name)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    keep_norm_statistics_on_recompute(checkpointed)
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    for model in (plain, checkpointed):
        model.train()
        model(x).square().mean().backward()
    norms = [(a, b) for a, b in zip(plain.modules(), checkpointed.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    assert norms
    for a, b in norms:
        assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == 1
        torch.testing.assert_close(b.running_var, a.running_var)
        torch.testing.assert_close(b.running_mean, a.running_mean)


# One or two small members of many timm families, at a 64-pixel input where the model takes any size
# (fixed-size models at their native one). The first six pool through a head conv: their output is
# head_hidden_size wide, not num_features (mobilenetv3_small_100 used to crash at the first step).
TIMM_FAMILIES = {
    "mobilenetv3_small_050": 64, "ghostnet_050": 64, "lcnet_050": 64, "hgnetv2_b0": 64, "mobilenetv4_conv_small": 64,
    "efficientvit_b0": 64, "mambaout_femto": 64,  # NHWC feature maps (as Swin)
    "resnet10t": 64, "convnext_atto": 64, "test_efficientnet": 64, "test_byobnet": 64, "test_nfnet": 64,
    "darknet17": 64, "ese_vovnet19b_slim": 64, "cspresnet50": 64, "tiny_vit_5m_224": 64,
    "test_vit": 64, "xcit_nano_12_p16_224": 64, "levit_128s": 224,  # token models; LeViT is fixed-size
}


@pytest.mark.parametrize("name", sorted(TIMM_FAMILIES))
def test_timm_families_report_their_real_output_sizes(name):
    from engine.models.backbones import backbone_token_dim, backbone_tokens

    model, dim = create_backbone(name, pretrained=False)
    assert model.training  # the size probe leaves the mode as it found it
    model.eval()
    size = TIMM_FAMILIES[name]
    with torch.no_grad():
        images = torch.randn(2, 3, size, size)
        pooled, tokens = backbone_tokens(model, images)  # cross-attention fusion's path
        assert model(images).shape == (2, dim)  # every other fusion's path
    assert pooled.shape == (2, dim)
    assert tokens.ndim == 3 and tokens.shape[0] == 2 and tokens.shape[2] == backbone_token_dim(model)


def test_head_conv_backbone_trains_in_a_fusion_model(tiny_text_encoder):
    """The reported crash: a concat fusion over mobilenetv3 expected num_features (the width before its head conv)."""
    from engine.models import ModelConfig, create_model

    for fusion in ("concat", "cross_attention"):
        cfg = ModelConfig(backbone="mobilenetv3_small_050", text_encoder=tiny_text_encoder, text_max_length=8,
                          fusion=fusion, fusion_dim=16, cross_attention_heads=2)
        model = create_model(cfg, 3, 1, [])
        out = model(torch.randn(2, 3, 64, 64), torch.randint(1000, 2000, (2, 8)), torch.ones(2, 8, dtype=torch.long),
                    torch.randn(2, 1), torch.zeros(2, 0, dtype=torch.long))
        out.logits.sum().backward()
        assert out.logits.shape == (2, 3)
