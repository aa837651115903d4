"""Retrieval metrics in blocks against a brute-force reference (full score matrix, stable argsort), with several
captions per image, an image without captions, and exact ties; zero-shot classification and its prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.training.retrieval_metrics import (
    class_prompts,
    mean_prompt_embeddings,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_metrics,
)


def _reference_ranks(image: np.ndarray, text: np.ndarray, text_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = image.astype(np.float64) @ text.astype(np.float64).T  # [Ni, Nt], exact for the integer cases
    t2i = np.array([int(np.flatnonzero(np.argsort(-s[:, t], kind="stable") == text_image[t])[0]) + 1
                    for t in range(len(text))])
    i2t = np.zeros(len(image), np.int64)
    for i in range(len(image)):
        order = np.argsort(-s[i], kind="stable")
        hits = np.flatnonzero(text_image[order] == i)
        i2t[i] = hits[0] + 1 if len(hits) else 0
    return i2t, t2i


def _data(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    ni, d = 37, 8
    counts = rng.integers(1, 5, ni)
    counts[5] = 0  # an image without captions: no i2t query
    text_image = np.repeat(np.arange(ni), counts)
    rng.shuffle(text_image)  # captions in any order
    if kind == "ties":  # small integers: exact scores, many ties, duplicated images and captions
        image = rng.integers(-2, 3, (ni, d)).astype(np.float32)
        image[7] = image[3]
        text = rng.integers(-2, 3, (len(text_image), d)).astype(np.float32)
        text[10] = text[2]
    else:
        image = rng.normal(size=(ni, d)).astype(np.float32)
        text = (image[text_image] + 0.8 * rng.normal(size=(len(text_image), d))).astype(np.float32)
    return image, text, text_image


@pytest.mark.parametrize("kind", ["ties", "random"])
@pytest.mark.parametrize("chunk,text_chunk", [(7, 13), (64, 4096), (1, 1)])
def test_ranks_match_the_brute_force_reference(kind, chunk, text_chunk):
    image, text, text_image = _data(kind)
    want_i2t, want_t2i = _reference_ranks(image, text, text_image)
    dtype = torch.float32 if kind == "ties" else torch.float64  # random: same rounding as the float64 reference
    i2t, t2i = retrieval_ranks(image, text, text_image, chunk=chunk, text_chunk=text_chunk, dtype=dtype)
    np.testing.assert_array_equal(i2t, want_i2t)
    np.testing.assert_array_equal(t2i, want_t2i)
    if kind == "ties":
        assert len(np.unique(image @ text.T)) < image.shape[0] * text.shape[0] / 10  # the case really is full of ties


def test_bf16_on_exact_scores_gives_the_same_ranks():
    image, text, text_image = _data("ties", seed=1)
    want = _reference_ranks(image, text, text_image)
    got = retrieval_ranks(torch.from_numpy(image), torch.from_numpy(text), text_image, chunk=5, text_chunk=9,
                          dtype=torch.bfloat16)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_metrics_follow_the_protocol():
    image, text, text_image = _data("random", seed=2)
    i2t, t2i = _reference_ranks(image, text, text_image)
    m = retrieval_metrics(image, text, text_image, chunk=8, text_chunk=16, dtype=torch.float64)
    i2t = i2t[i2t > 0]  # the image without captions is no query
    for k in (1, 5, 10):
        assert m[f"i2t_r{k}"] == pytest.approx((i2t <= k).mean())
        assert m[f"t2i_r{k}"] == pytest.approx((t2i <= k).mean())
    both = np.concatenate([i2t, t2i])
    assert m["mean_rank"] == pytest.approx(both.mean()) and m["median_rank"] == np.median(both)
    assert m["i2t_median_rank"] == np.median(i2t) and m["t2i_mean_rank"] == pytest.approx(t2i.mean())
    assert m["num_images"] == 36 and m["num_texts"] == len(text_image)
    assert m["rsum"] == pytest.approx(100 * sum(m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert m["i2t_r1"] > 0.3 and m["t2i_r10"] > 0.6  # captions near their image: far above chance


def test_any_caption_in_the_top_k_is_an_image_hit():
    image = np.eye(3, dtype=np.float32)
    text = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0.9, 0, 0]], np.float32)  # image 0's captions: 3 and 1
    i2t, t2i = retrieval_ranks(image, text, np.array([1, 0, 2, 0]))
    assert i2t.tolist() == [1, 1, 1]  # image 0: its best caption (1) ranks first, the other one does not count
    assert t2i.tolist() == [1, 1, 1, 1]


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        retrieval_ranks(np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="outside 0..2"):
        retrieval_ranks(np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float32), np.array([0, 3]))


def test_zero_shot_uses_the_classification_metrics():
    rng = np.random.default_rng(0)
    classes = ["warm_calm", "cool_calm", "warm_stormy"]
    class_emb = np.eye(3, 8, dtype=np.float32)
    labels = rng.integers(0, 3, 90)
    image = class_emb[labels] + 0.3 * rng.normal(size=(90, 8)).astype(np.float32)
    labels_seen = labels.copy()
    labels_seen[:9] = (labels[:9] + 1) % 3  # some wrong labels: top-1 below 1
    m = zero_shot_metrics(image, class_emb, labels_seen, classes, chunk=16)
    pred = (image @ class_emb.T).argmax(1)
    assert m["top1"] == pytest.approx((pred == labels_seen).mean()) and 0.5 < m["top1"] < 1
    from sklearn.metrics import f1_score

    assert m["f1_macro"] == pytest.approx(f1_score(labels_seen, pred, average="macro"))
    assert set(m["per_class"]) == set(classes)


def test_class_prompts_and_their_mean_embedding():
    assert class_prompts("a photo of {}", ["warm_calm", "dog"]) == ["a photo of warm calm", "a photo of dog"]
    assert class_prompts(["a {}", "the {}."], ["x", "y"]) == ["a x", "the x.", "a y", "the y."]
    with pytest.raises(ValueError, match="has no"):
        class_prompts("a photo", ["x"])
    e = mean_prompt_embeddings(np.array([[1, 0], [0, 1], [2, 0], [2, 0]], np.float32), n_templates=2)
    np.testing.assert_allclose(e.numpy(), [[0.7071068, 0.7071068], [1, 0]], rtol=1e-6)
