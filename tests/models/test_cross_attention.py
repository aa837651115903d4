"""cross_attention fusion over every backbone family: token features in, every parameter trained, masking exact."""
import pytest
import torch
import torch.nn.functional as F

from engine.models import ModelConfig, create_model
from tests.conftest import aux_losses

B, L, C = 2, 8, 3


@pytest.fixture
def backbone(request, tiny_clip_dir, tiny_siglip_dir):
    return {"clip": tiny_clip_dir, "siglip": tiny_siglip_dir}.get(request.param, request.param)


def make(backbone, text, **overrides):
    cfg = dict(backbone=backbone, text_encoder=text, text_max_length=L, fusion="cross_attention", fusion_dim=16,
               cross_attention_heads=2, tabular_hidden=8, dropout=0.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return create_model(ModelConfig(**cfg), C, 2, [3])


def inputs(image_seed=0, text_seed=0):
    images = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(image_seed))
    ids = torch.randint(1000, 2000, (B, L), generator=torch.Generator().manual_seed(text_seed))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 4:] = 0  # padding is not attended to
    return images, ids, mask, torch.randn(B, 2, generator=torch.Generator().manual_seed(7)), torch.zeros(B, 1, dtype=torch.long)


# timm CNN, timm ViT, torchvision ResNet-50, CLIP and SigLIP vision towers
FAMILIES = ["test_resnet", "test_vit", "resnet50", "clip", "siglip"]


@pytest.mark.parametrize("direction", ["text_to_image", "both"])
@pytest.mark.parametrize("backbone", FAMILIES, indirect=True)
def test_every_backbone_family_trains_every_parameter(backbone, tiny_text_encoder, direction):
    model = make(backbone, tiny_text_encoder, cross_attention=direction, aux_loss_weight=0.1).train()
    out = model(*inputs())
    assert out.logits.shape == (B, C)
    labels = torch.tensor([0, 2])
    (F.cross_entropy(out.logits, labels) + sum(aux_losses(model, out, labels).values())).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("direction", ["text_to_image", "both"])
@pytest.mark.parametrize("backbone", ["test_resnet", "clip"], indirect=True)
def test_a_masked_modality_contributes_nothing(backbone, tiny_text_encoder, direction):
    model = make(backbone, tiny_text_encoder, cross_attention=direction).eval()
    with torch.no_grad():
        for masked, vary in (("image", dict(image_seed=1)), ("text", dict(text_seed=1))):
            model.mask_modalities = []
            assert not torch.allclose(model(*inputs()).logits, model(*inputs(**vary)).logits)  # it matters ...
            model.mask_modalities = [masked]
            torch.testing.assert_close(model(*inputs()).logits, model(*inputs(**vary)).logits)  # ... unless masked


def test_padding_tokens_are_ignored(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder, cross_attention="both").eval()
    images, ids, mask, numeric, categorical = inputs()
    other = ids.clone()
    other[1, 4:] = 1500  # different token ids under the padding mask
    with torch.no_grad():
        a = model(images, ids, mask, numeric, categorical).logits
        b = model(images, other, mask, numeric, categorical).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_modality_dropout_and_bf16(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder, modality_dropout=0.5).train()
    F.cross_entropy(model(*inputs()).logits, torch.tensor([0, 1])).backward()
    model = model.to(torch.bfloat16).eval()
    images, *rest = inputs()
    rest[2] = rest[2].to(torch.bfloat16)
    with torch.no_grad():
        logits = model(images.to(torch.bfloat16), *rest).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_cross_attention_needs_image_and_text():
    with pytest.raises(ValueError, match="cross_attention needs both"):
        ModelConfig(fusion="cross_attention", text_encoder=None)
    with pytest.raises(ValueError, match="cross_attention_heads"):
        ModelConfig(fusion="cross_attention", fusion_dim=30, cross_attention_heads=4)
