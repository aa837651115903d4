import copy

import pytest
import torch

from engine.models.text import TEXT_ENCODERS, TextEncoder, load_tokenizer, resolve_text_encoder, tokenize


def test_tokenize_pads_to_max_length_exactly(tiny_text_encoder):
    tokenizer = load_tokenizer(tiny_text_encoder)
    ids, mask = tokenize(tokenizer, ["a short text", "a much longer text " * 20], max_length=16)
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == torch.long
    assert mask[0].sum() < 16 and mask[1].sum() == 16


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_shapes_and_padding_invariance(tiny_text_encoder, pooling):
    encoder = TextEncoder(tiny_text_encoder, pooling).eval()
    ids, mask = tokenize(load_tokenizer(tiny_text_encoder), ["hello world"], max_length=8)
    longer_ids, longer_mask = tokenize(load_tokenizer(tiny_text_encoder), ["hello world"], max_length=12)
    with torch.no_grad():
        a, b = encoder(ids, mask), encoder(longer_ids, longer_mask)
    assert a.shape == (1, 32)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # padding does not change the pooled vector


def test_minilm_alias_is_offline():
    encoder = TextEncoder("minilm")
    assert encoder.dim == 384 and encoder.model.config.num_hidden_layers == 6
    assert load_tokenizer("minilm").vocab_size == 30522


def test_aliases_resolve_to_pinned_names():
    assert resolve_text_encoder("pubmedbert") == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
    assert {"sapbert", "bert-base", "roberta-base", "mobilebert"} <= set(TEXT_ENCODERS)


def test_unknown_encoder_offline_fails_clearly():
    with pytest.raises(OSError) as e:
        TextEncoder("no-such-org/no-such-encoder")
    assert "no-such-org/no-such-encoder" in str(e.value) and "local folder" in str(e.value)
    with pytest.raises(OSError, match="no-such-org/no-such-encoder"):
        load_tokenizer("no-such-org/no-such-encoder")


def test_layer_ids_follow_encoder_layers(tiny_text_encoder):
    encoder = TextEncoder(tiny_text_encoder)
    ids, num_layers = encoder.layer_ids()
    assert num_layers == 3  # embeddings, layer 0, layer 1 (the unused pooler is removed)
    assert ids["model.embeddings.word_embeddings.weight"] == 0
    assert ids["model.encoder.layer.1.output.dense.weight"] == 2


def test_grad_checkpointing_gives_same_gradients(tiny_text_encoder):
    plain = TextEncoder(tiny_text_encoder).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert getattr(checkpointed.model, "is_activation_checkpointing", None) or checkpointed.model.is_gradient_checkpointing
    ids, mask = tokenize(load_tokenizer(tiny_text_encoder), ["some text", "other words here"], max_length=8)
    grads = []
    for model in (plain, checkpointed):
        model(ids, mask).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)
