import copy
import math

import pytest
import torch
import torch.nn.functional as F

from engine.models import FUSERS, ModelConfig, create_model
from engine.training.losses import info_nce
from tests.conftest import aux_losses

B, L, C, NUM, CARDS = 4, 8, 3, 4, [3, 5]


def make(tiny_text_encoder, **overrides):
    cfg = dict(backbone="test_resnet", text_encoder=tiny_text_encoder, text_max_length=L, fusion_dim=16, tabular_hidden=8,
               dropout=0.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return create_model(ModelConfig(**cfg), C, NUM, CARDS)


def inputs(seed: int = 0, text_seed: int | None = None):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, 32, 32, generator=g)
    input_ids = torch.randint(1000, 2000, (B, L),
                              generator=torch.Generator().manual_seed(seed if text_seed is None else text_seed))
    mask = torch.ones(B, L, dtype=torch.long)
    return images, input_ids, mask, torch.randn(B, NUM, generator=g), torch.randint(0, 3, (B, len(CARDS)), generator=g)


def train_step(model, labels=None):
    model.train()
    model.zero_grad()
    out = model(*inputs())
    labels = torch.tensor([0, 1, 2, 0]) if labels is None else labels
    loss = F.cross_entropy(out.logits.float(), labels) + sum(aux_losses(model, out, labels).values())
    loss.backward()
    return out


def params_without_grad(model):
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("fusion", sorted(FUSERS))
def test_each_fusion_mode_trains_every_parameter(tiny_text_encoder, fusion):
    model = make(tiny_text_encoder, fusion=fusion, aux_loss_weight=0.3, contrastive_weight=0.1)
    out = train_step(model)
    assert out.logits.shape == (B, C)
    assert set(out.aux_logits) == {"image", "text", "tabular"}
    assert params_without_grad(model) == []
    if fusion in ("weighted_sum", "gated"):  # softmax weights over the modalities, per sample
        torch.testing.assert_close(out.modality_weights.sum(1), torch.ones(B))


@pytest.mark.parametrize("only", ["image", "text", "tabular"])
def test_single_modality_models_from_the_same_code(tiny_text_encoder, only):
    model = make(
        tiny_text_encoder, fusion="gated", backbone="test_resnet" if only == "image" else None,
        text_encoder=tiny_text_encoder if only == "text" else None, use_tabular=only == "tabular",
    )
    assert model.modalities == [only]
    train_step(model)
    assert params_without_grad(model) == []


def test_modality_dropout_keeps_every_gradient_and_one_modality(tiny_text_encoder):
    model = make(tiny_text_encoder, fusion="weighted_sum", use_tabular=False, modality_dropout=0.9).train()
    train_step(model)
    assert params_without_grad(model) == []
    mask = model.modality_mask(1000, torch.device("cpu"), torch.float32)
    assert (mask.sum(1) >= 1).all() and (mask == 0).any()
    assert torch.equal(model.eval().modality_mask(8, torch.device("cpu"), torch.float32), torch.ones(8, 2))


@pytest.mark.parametrize("fusion", sorted(FUSERS))
def test_masked_text_at_evaluation_ignores_the_text(tiny_text_encoder, fusion):
    model = make(tiny_text_encoder, fusion=fusion).eval()
    with torch.no_grad():
        a = model(*inputs(text_seed=1)).logits
        b = model(*inputs(text_seed=2)).logits
        assert not torch.allclose(a, b)  # the text matters ...
        model.mask_modalities = ["text"]
        a = model(*inputs(text_seed=1)).logits
        b = model(*inputs(text_seed=2)).logits
    torch.testing.assert_close(a, b)  # ... unless it is masked


def test_mask_modalities_from_config_only_at_evaluation(tiny_text_encoder):
    model = make(tiny_text_encoder, mask_modalities=["image"])
    assert model.train().modality_mask(2, torch.device("cpu"), torch.float32).all()
    assert model.eval().modality_mask(2, torch.device("cpu"), torch.float32)[:, 0].eq(0).all()


def test_set_frozen_freezes_encoders_and_keeps_bn_in_eval(tiny_text_encoder):
    model = make(tiny_text_encoder)
    model.set_frozen(True)
    model.train()
    bns = [m for m in model.image.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert not any(p.requires_grad for p in model.image.parameters())
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.head.parameters()) and model.head.training
    before = bns[0].running_mean.clone()
    train_step(model)
    assert torch.equal(bns[0].running_mean, before)
    assert all(p.grad is None for p in model.image.parameters()) and params_without_grad(model) == []
    model.set_frozen(False)
    assert all(m.training for m in bns) and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("fusion", sorted(FUSERS))
def test_param_groups_cover_every_parameter_once(tiny_text_encoder, fusion):
    model = make(tiny_text_encoder, fusion=fusion, aux_loss_weight=0.1, contrastive_weight=0.1)
    model.set_frozen(True)  # frozen parameters still get a group: they are trained after unfreezing
    groups = model.param_groups({"backbone": 0.1, "text": 0.5})
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) and set(seen) == {id(p) for p in model.parameters()}
    assert {g["name"] for g in groups} == {"backbone", "text", "tabular", "fusion", "head"}
    for g in groups:
        assert set(g) >= {"name", "params", "lr_scale", "layer_id", "num_layers"}
        assert g["lr_scale"] == {"backbone": 0.1, "text": 0.5}.get(g["name"], 1.0)
        if g["name"] in ("backbone", "text"):
            assert 0 <= g["layer_id"] < g["num_layers"]
        else:
            assert g["layer_id"] is None
    assert len({g["layer_id"] for g in groups if g["name"] == "text"}) == 3


def test_auxiliary_losses_are_weighted_and_take_soft_labels(tiny_text_encoder):
    model = make(tiny_text_encoder)
    assert aux_losses(model, model(*inputs()), torch.tensor([0, 1, 2, 0])) == {}
    model = make(tiny_text_encoder, aux_loss_weight=0.5, contrastive_weight=0.2).eval()
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out = model(*inputs())
        hard = aux_losses(model, out, labels)
        soft = aux_losses(model, out, F.one_hot(labels, C).float())
    assert set(hard) == {"aux_image", "aux_text", "aux_tabular", "contrastive"}
    torch.testing.assert_close(hard["aux_text"], 0.5 * F.cross_entropy(out.aux_logits["text"], labels))
    for k in hard:
        assert hard[k].ndim == 0
        torch.testing.assert_close(hard[k], soft[k])
    # at initialisation the contrastive loss is about log(B)
    assert abs(hard["contrastive"].item() / 0.2 - math.log(B)) < 0.5


def test_info_nce_sane():
    torch.manual_seed(0)
    n = 256
    image, text = F.normalize(torch.randn(n, 64), dim=-1), F.normalize(torch.randn(n, 64), dim=-1)
    assert abs(info_nce(image, text, torch.tensor(1.0)).item() - math.log(n)) < 0.05
    matched = info_nce(image, image, torch.tensor(100.0)).item()
    assert matched < 0.01
    # a few optimisation steps of the projections bring matching pairs together
    proj = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(proj.parameters(), lr=1.0)
    losses = []
    for _ in range(20):
        loss = info_nce(image, F.normalize(proj(text + image), dim=-1), torch.tensor(10.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_grad_checkpointing_gives_same_gradients(tiny_text_encoder):
    plain = make(tiny_text_encoder, fusion="gated")  # torchvision resnet50 is covered in test_backbones
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.image.grad_checkpointing
    grads = []
    for model in (plain, checkpointed):
        train_step(model)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_bf16_model_fuses_in_bf16(tiny_text_encoder):
    model = make(tiny_text_encoder, backbone=None, fusion="gated").to(torch.bfloat16).eval()
    with torch.no_grad():
        out = model(*inputs())
    assert out.logits.dtype == torch.bfloat16 and out.logits.shape == (B, C)


def test_tokenizer_name_points_at_the_encoder(tiny_text_encoder):
    assert make(tiny_text_encoder).tokenizer_name == tiny_text_encoder
    assert make(tiny_text_encoder, text_encoder=None).tokenizer_name is None


def test_sigmoid_gates_mask_and_train(tiny_text_encoder):
    model = make(tiny_text_encoder, fusion="gated", gate="sigmoid", mask_modalities=["text"])
    train_step(model)
    assert params_without_grad(model) == []
    with torch.no_grad():
        out = model.eval()(*inputs())
    assert out.modality_weights[:, 1].eq(0).all() and out.modality_weights.gt(0).sum() > 0


@pytest.mark.parametrize("num_numeric,cards", [(1, []), (2, []), (3, [4])])
def test_tabular_branch_keeps_each_rows_level_and_scale(num_numeric, cards):
    """A row and its shifted or scaled copy are different patients: the branch must tell them apart
    (a LayerNorm across the input columns made one numeric column a constant)."""
    from engine.models.tabular import TabularMLP

    torch.manual_seed(0)
    branch = TabularMLP(num_numeric, cards).eval()
    x = torch.randn(6, num_numeric)
    cat = torch.zeros(6, len(cards), dtype=torch.long)
    out = branch(x, cat)
    for other in (x * 3, x + 5):
        assert not torch.allclose(out, branch(other, cat), atol=1e-4)
    assert torch.unique(out[:, 0]).numel() == 6  # one output per distinct row, not a constant
