"""The dual encoder (model.task=retrieval): towers, projections from a CLIP/SigLIP checkpoint, loss, queue, momentum."""
import copy
import math
from dataclasses import replace

import pytest
import torch

from engine.models import DualEncoderModel, ModelConfig, check_queue_size, create_model
from tests.conftest import dual_loss

B, L = 4, 8


def make(backbone, text_encoder, **overrides):
    cfg = dict(task="retrieval", backbone=backbone, text_encoder=text_encoder, text_max_length=L, contrastive_dim=16,
               use_tabular=False)
    cfg.update(overrides)
    torch.manual_seed(0)
    return create_model(ModelConfig(**cfg), num_classes=0)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 5:] = 0
    return torch.randn(B, 3, 32, 32, generator=g), ids, mask


def test_retrieval_config_needs_both_towers():
    with pytest.raises(ValueError, match="retrieval needs both"):
        ModelConfig(task="retrieval", text_encoder=None)
    with pytest.raises(ValueError, match="queue_size / model.momentum are for model.task=retrieval"):
        ModelConfig(queue_size=8)
    with pytest.raises(ValueError, match="needs model.queue_size"):
        ModelConfig(task="retrieval", momentum=0.9)
    with pytest.raises(ValueError, match="hard_negatives=weighted works on model.contrastive_loss=infonce"):
        ModelConfig(task="retrieval", contrastive_loss="sigmoid", hard_negatives="weighted")


def test_any_registry_towers_train_every_parameter(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder)
    assert isinstance(model, DualEncoderModel) and model.tokenizer_name == tiny_text_encoder
    model.train()
    out = model(*inputs())
    assert out.image_emb.shape == out.text_emb.shape == (B, 16)
    torch.testing.assert_close(out.image_emb.norm(dim=1), torch.ones(B))
    loss, parts = dual_loss(model, out)
    assert set(parts) == {"contrastive"} and loss.dtype == torch.float32
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(inputs()[0]), model(*inputs()).image_emb)


def test_param_groups_cover_every_trainable_parameter_once(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder, queue_size=8, momentum=0.9)
    model.set_frozen(True)
    groups = model.param_groups({"backbone": 0.1})
    seen = [id(p) for g in groups for p in g["params"]]
    trained = {id(p) for n, p in model.named_parameters() if not n.startswith("momentum_towers.")}
    assert len(seen) == len(set(seen)) and set(seen) == trained
    assert {g["name"] for g in groups} == {"backbone", "text", "head"}
    for g in groups:
        assert g["lr_scale"] == (0.1 if g["name"] == "backbone" else 1.0)
        assert (g["layer_id"] is None) == (g["name"] == "head")


def test_frozen_towers_keep_norm_statistics_and_get_no_gradient(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder)
    model.set_frozen(True)
    model.train()
    bn = next(m for m in model.image.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    dual_loss(model, model(*inputs()))[0].backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in [*model.image.parameters(), *model.text.parameters()])
    assert all(p.grad is not None for p in model.contrastive.parameters())


def test_grad_checkpointing_gives_same_gradients(tiny_clip_dir):
    plain = make(tiny_clip_dir, tiny_clip_dir)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        dual_loss(model, model(*inputs()))[0].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_clip_checkpoint_initialises_projections_and_temperature(tiny_clip_dir):
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    model = make(tiny_clip_dir, tiny_clip_dir).eval()
    assert torch.equal(model.contrastive.image.weight, reference.visual_projection.weight)
    assert torch.equal(model.contrastive.text.weight, reference.text_projection.weight)
    images, ids, mask = inputs()
    with torch.no_grad():
        out = model(images, ids, mask)
        expected = reference(input_ids=ids, attention_mask=mask, pixel_values=images)
    # the model starts as the checkpoint: the same similarities, zero-shot ready
    torch.testing.assert_close(out.logit_scale * out.image_emb @ out.text_emb.T, expected.logits_per_image, rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match="contrastive_dim=8 differs .* joint size 16"):
        make(tiny_clip_dir, tiny_clip_dir, contrastive_dim=8)


def test_siglip_checkpoint_initialises_scale_and_bias(tiny_siglip_dir):
    from transformers import SiglipModel

    reference = SiglipModel.from_pretrained(tiny_siglip_dir).eval()
    model = make(tiny_siglip_dir, tiny_siglip_dir, contrastive_dim=32, contrastive_loss="sigmoid").eval()
    assert model.contrastive.logit_scale.item() == 2.0 and model.contrastive.logit_bias.item() == -5.0
    images, ids, mask = inputs()
    with torch.no_grad():
        out = model(images, ids, mask)
        expected = reference(input_ids=ids, pixel_values=images)  # SigLIP: no attention mask, as trained
    torch.testing.assert_close(out.logit_scale * out.image_emb @ out.text_emb.T + out.logit_bias, expected.logits_per_image,
                               rtol=1e-4, atol=1e-5)
    # InfoNCE from a SigLIP checkpoint: projections yes, SigLIP's scale no (CLIP's start instead)
    infonce = make(tiny_siglip_dir, tiny_siglip_dir, contrastive_dim=32)
    assert abs(infonce.contrastive.logit_scale.item() - math.log(1 / 0.07)) < 1e-5


def test_loss_reads_hard_negative_settings_at_call_time(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder).eval()
    with torch.no_grad():
        out = model(*inputs())
        plain = dual_loss(model, out)[0]
        stage_cfg = replace(model.cfg, hard_negatives="semihard")  # a stage's model config, passed to the loss
        assert not torch.allclose(dual_loss(model, out, stage_cfg)[0], plain) and model.cfg.hard_negatives == "none"
        model.cfg = replace(model.cfg, hard_negatives="weighted", hard_negative_beta=2.0)  # a stage's override
        weighted = dual_loss(model, out)[0]
        model.cfg.hard_negative_beta = -1.0  # mutated in place: still checked
        with pytest.raises(ValueError, match="hard_negative_beta"):
            dual_loss(model, out)
    assert not torch.allclose(plain, weighted)


def test_queue_fills_with_the_batch_in_training_only(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder, queue_size=6)
    model.eval()
    with torch.no_grad():
        dual_loss(model, model(*inputs()))
    assert int(model.queue.count) == 0
    model.train()
    out = model(*inputs())
    first, _ = dual_loss(model, out)
    assert int(model.queue.count) == B
    torch.testing.assert_close(model.queue.image[:B], out.image_emb.detach())
    second, _ = dual_loss(model, model(*inputs(1)))  # now with 4 queued negatives per direction
    second.backward()
    assert int(model.queue.count) == 6 and int(model.queue.ptr) == 2
    state = model.state_dict()
    assert {"queue.image", "queue.text", "queue.ptr", "queue.count"} <= set(state)
    resumed = make("test_resnet", tiny_text_encoder, queue_size=6)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.queue.image, model.queue.image) and int(resumed.queue.ptr) == 2


def test_momentum_towers_fill_the_queue_and_follow_the_trained_ones(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder, queue_size=8, momentum=0.5)
    assert not any(p.requires_grad for p in model.momentum_towers.parameters())
    model.train()
    assert not model.momentum_towers.training
    with torch.no_grad():  # identical copies at the start (the momentum towers always run in eval mode)
        images = inputs()[0]
        towers = model.momentum_towers
        torch.testing.assert_close(towers["contrastive"].embed_image(towers["image"](images)), model.eval().encode_image(images))
    model.train()
    out = model(*inputs())
    loss, _ = dual_loss(model, out)
    torch.testing.assert_close(model.queue.image[:B], out.queued_image)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad.sign())  # an optimizer step
    old = [p.clone() for p in model.momentum_towers.parameters()]
    model.momentum_update()
    online = [*model.image.parameters(), *model.text.parameters(), *model.contrastive.parameters()]
    for m, o, p in zip(model.momentum_towers.parameters(), old, online):
        torch.testing.assert_close(m, 0.5 * o + 0.5 * p)


def test_momentum_update_accumulates_in_fp32_for_bf16_weights(tiny_text_encoder):
    model = make("test_resnet", tiny_text_encoder, queue_size=8, momentum=0.995).to(torch.bfloat16)
    target = model.contrastive.image.weight
    slow = model.momentum_towers["contrastive"].image.weight
    start = slow.float().clone()
    with torch.no_grad():
        target.add_(1.0)
    for _ in range(40):
        model.momentum_update()
    moved = (slow.float() - start).mean().item()
    assert abs(moved - (1 - 0.995 ** 40)) < 0.02  # each 0.005 step alone is below bf16's resolution near 1


def test_queue_larger_than_the_data_is_refused():
    check_queue_size(100, 164, 64)
    with pytest.raises(ValueError, match=r"model.queue_size=101 .* use model.queue_size <= 100"):
        check_queue_size(101, 164, 64)
