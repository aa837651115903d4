"""CLIP / SigLIP checkpoints as the image branch (vision tower) and the text branch (text tower)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from engine.models import FUSERS, ModelConfig, PretrainedWeightsError, backbone_input_spec, check_input_spec, create_model
from engine.models.backbones import backbone_layer_ids, backbone_tokens, create_backbone
from engine.models.text import TextEncoder, load_tokenizer, tokenize
from tests.conftest import aux_losses

FAMILIES = ["clip", "siglip"]


@pytest.fixture
def tower_dir(request, tiny_clip_dir, tiny_siglip_dir):
    return {"clip": tiny_clip_dir, "siglip": tiny_siglip_dir}[request.param]


def _hf_full(path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path).eval()


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_vision_tower_is_the_checkpoints_with_its_own_pooling(tower_dir):
    tower, dim = create_backbone(tower_dir)
    assert dim == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = _hf_full(tower_dir).vision_model(pixel_values=x).pooler_output
        got = tower.eval()(x)
    torch.testing.assert_close(got, expected)
    with torch.no_grad():  # another size: position embeddings interpolated
        assert tower(torch.randn(2, 3, 48, 48)).shape == (2, 32)


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_vision_only_folder_loads(tower_dir, tmp_path):
    import transformers

    cls = {"clip": transformers.CLIPVisionModel, "siglip": transformers.SiglipVisionModel}
    tower, _ = create_backbone(tower_dir)
    cls[tower.family].from_pretrained(tower_dir).save_pretrained(tmp_path)
    vision_only, _ = create_backbone(str(tmp_path))
    for (k, a), (_, b) in zip(tower.state_dict().items(), vision_only.state_dict().items()):
        assert torch.equal(a, b), k


def test_checkpoint_without_vision_tower_is_refused(tiny_text_encoder):
    with pytest.raises(ValueError, match="'bert' checkpoint without a vision tower"):
        create_backbone(tiny_text_encoder)


@pytest.mark.parametrize("name", ["openai/clip-vit-base-patch32", "google/medsiglip-448"])
def test_hub_tower_offline_fails_naming_the_weights(name):
    with pytest.raises(PretrainedWeightsError) as e:
        create_backbone(name)
    assert name in str(e.value) and "local folder" in str(e.value)
    with pytest.raises(OSError, match="local folder"):
        TextEncoder(name)


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_layer_ids_are_monotone_in_depth(tower_dir):
    tower, _ = create_backbone(tower_dir)
    ids, num_layers = backbone_layer_ids(tower)
    names = [n for n, _ in tower.named_parameters()]
    assert set(ids) == set(names) and num_layers == 4  # embeddings, 2 layers, post-norm/head
    assert ids["model.embeddings.patch_embedding.weight"] == 0
    assert ids["model.encoder.layers.1.mlp.fc1.weight"] == 2 and ids["model.post_layernorm.weight"] == 3
    assert [ids[n] for n in names] == sorted(ids[n] for n in names)  # named in forward order
    text_ids, text_layers = TextEncoder(tower_dir).layer_ids()
    assert text_layers == 4 and min(text_ids.values()) == 0


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_grad_checkpointing_gives_same_gradients(tower_dir):
    x = torch.randn(2, 3, 32, 32)
    ids, mask = tokenize(load_tokenizer(tower_dir), ["a photo", "another photo of it"], 8)
    for build, run in ((lambda: create_backbone(tower_dir)[0], lambda m: m(x)),
                       (lambda: TextEncoder(tower_dir), lambda m: m(ids, mask))):
        plain = build().train()
        checkpointed = copy.deepcopy(plain)
        checkpointed.set_grad_checkpointing(True)
        grads = []
        for model in (plain, checkpointed):
            run(model).square().sum().backward()
            grads.append({n: p.grad for n, p in model.named_parameters()})
        assert all(g is not None for g in grads[1].values())
        for n in grads[0]:
            torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_text_tower_pools_like_the_checkpoint(tower_dir):
    encoder = TextEncoder(tower_dir).eval()
    tokenizer = load_tokenizer(tower_dir)
    assert encoder.pooling == "tower" and encoder.dim == 32
    ids, mask = tokenize(tokenizer, ["a short text", "a longer text about a photo"], 12)
    hf = _hf_full(tower_dir).text_model
    with torch.no_grad():
        got = encoder(ids, mask)
        # SigLIP was trained without an attention mask (pads are tokens it has seen); CLIP uses it
        expected = hf(input_ids=ids, attention_mask=None if encoder.family == "siglip" else mask).pooler_output
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="model.text_max_length=65"):
        TextEncoder(tower_dir, max_length=65)


def test_text_checkpoint_without_text_tower_is_refused(tiny_clip_dir, tmp_path):
    from transformers import CLIPVisionModel

    CLIPVisionModel.from_pretrained(tiny_clip_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="without a text tower"):
        TextEncoder(str(tmp_path))


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_siglip_head_dropped_when_pooling_ourselves(tower_dir):
    encoder = TextEncoder(tower_dir, pooling="mean")
    ids, mask = tokenize(load_tokenizer(tower_dir), ["words"], 8)
    encoder(ids, mask).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())  # no parameter left without a gradient


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_input_spec_from_the_checkpoint(tower_dir):
    spec = backbone_input_spec(tower_dir)
    assert spec.image_size == 32 and spec.size_multiple == 8
    cfg = ModelConfig(backbone=tower_dir, text_encoder=None)
    check_input_spec(cfg, 32, spec.mean, spec.std)
    with pytest.raises(ValueError, match=r"augment\.mean=.*set augment\.mean="):
        check_input_spec(cfg, 32, (0.1, 0.2, 0.3), spec.std)
    with pytest.raises(ValueError, match=r"data\.image_size=36 is not a multiple of .* patch size 8"):
        check_input_spec(cfg, 36, spec.mean, spec.std)
    with pytest.warns(UserWarning, match="interpolated"):
        check_input_spec(cfg, 48, spec.mean, spec.std)


def test_input_spec_of_timm_and_torchvision():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert backbone_input_spec("resnet50") == (None, *imagenet, 1)
    assert backbone_input_spec("vit_b16").size_multiple == 16
    assert backbone_input_spec("siglip_vitb16").mean == (0.5, 0.5, 0.5)
    # random init: any normalisation goes; pretrained: the weights' own
    check_input_spec(ModelConfig(backbone="resnet18"), 64, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="augment.mean"):
        check_input_spec(ModelConfig(backbone="resnet18", pretrained=True), 64, (0.5,) * 3, (0.5,) * 3)


B, L = 2, 8


def _inputs(seed=0, text_seed=None, image_seed=None):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed if image_seed is None else image_seed))
    ids = torch.randint(1000, 2000, (B, L), generator=torch.Generator().manual_seed(seed if text_seed is None else text_seed))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 5:] = 0
    return images, ids, mask, torch.randn(B, 2, generator=g), torch.zeros(B, 1, dtype=torch.long)


@pytest.mark.parametrize("fusion", sorted(FUSERS))
@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_towers_in_every_fusion_mode(tower_dir, fusion):
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone=tower_dir, text_encoder=tower_dir, text_max_length=L, fusion=fusion, fusion_dim=16,
                                     tabular_hidden=8, dropout=0.0, aux_loss_weight=0.1, contrastive_weight=0.1), 3, 2, [3])
    model.train()
    out = model(*_inputs())
    labels = torch.tensor([0, 2])
    (F.cross_entropy(out.logits, labels) + sum(aux_losses(model, out, labels).values())).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("tower_dir", FAMILIES, indirect=True)
def test_frozen_towers_get_no_gradient_and_bf16_runs(tower_dir):
    model = create_model(ModelConfig(backbone=tower_dir, text_encoder=tower_dir, text_max_length=L, fusion_dim=16,
                                     use_tabular=False, grad_checkpointing=True), 3)
    model.set_frozen(True)
    model.train()
    F.cross_entropy(model(*_inputs()).logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in [*model.image.parameters(), *model.text.parameters()])
    assert all(p.grad is not None for p in model.head.parameters())
    model = model.to(torch.bfloat16).eval()
    images, *rest = _inputs()
    with torch.no_grad():
        logits = model(images.to(torch.bfloat16), *rest).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_backbone_tokens_of_every_family(tiny_clip_dir, tiny_siglip_dir):
    """Pooled features as model(x), and tokens of the declared width, for each backbone family."""
    x = torch.randn(2, 3, 32, 32)
    for name, n_tokens in (("test_resnet", None), ("test_vit", None), ("resnet50", 1), (tiny_clip_dir, 17),
                           (tiny_siglip_dir, 16)):
        model, dim = create_backbone(name)
        model.eval()
        with torch.no_grad():
            pooled, tokens = backbone_tokens(model, x)
            torch.testing.assert_close(pooled, model(x), msg=str(name))
        assert pooled.shape == (2, dim) and tokens.ndim == 3 and tokens.shape[2] == model.token_dim, name
        if n_tokens:
            assert tokens.shape[1] == n_tokens, name


def test_tokenizer_needing_a_missing_package_says_what_to_install(tmp_path):
    pytest.importorskip("transformers")
    try:
        import sentencepiece  # noqa: F401
        pytest.skip("sentencepiece is installed here")
    except ImportError:
        pass
    (tmp_path / "config.json").write_text('{"model_type": "siglip"}')
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "SiglipTokenizer"}')
    (tmp_path / "spiece.model").write_bytes(b"")
    with pytest.raises(OSError, match="SentencePiece.*pip install sentencepiece"):
        load_tokenizer(str(tmp_path))
