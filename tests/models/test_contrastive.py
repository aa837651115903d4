"""Contrastive losses against brute-force references (loops over pairs), single process."""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.models.contrastive import ContrastiveHead, EmbeddingQueue
from engine.training.losses import info_nce, sigmoid_loss

B, K, D = 5, 3, 8


def _unit(n, seed):
    return F.normalize(torch.randn(n, D, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _sim(a, b):
    return float((a * b).sum())


def _brute_info_nce(image, text, scale, queue_image=None, queue_text=None, row_loss=None):
    """Mean over both directions and every row of -log softmax of the positive, columns = batch + queue."""
    total = 0.0
    for rows, cols, queue in ((image, text, queue_text), (text, image, queue_image)):
        cols = list(cols) + (list(queue) if queue is not None else [])
        for i, r in enumerate(rows):
            logits = [scale * _sim(r, c) for c in cols]
            total += row_loss(logits, i) if row_loss else -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / (2 * len(image))


def _brute_sigmoid(image, text, scale, bias, queue_image=None, queue_text=None):
    total = 0.0
    for i, x in enumerate(image):
        for j, y in enumerate(text):
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * (scale * _sim(x, y) + bias)))
    for rows, queue in ((image, queue_text), (text, queue_image)):
        for r in rows if queue is not None else []:
            for q in queue:
                total += math.log1p(math.exp(scale * _sim(r, q) + bias))
    return total / len(image)


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_matches_brute_force(with_queue):
    image, text = _unit(B, 0), _unit(B, 1)
    queue = (_unit(K, 2), _unit(K, 3)) if with_queue else (None, None)
    got = info_nce(image, text, torch.tensor(4.0), *queue)
    assert abs(got.item() - _brute_info_nce(image, text, 4.0, *queue)) < 1e-5


@pytest.mark.parametrize("with_queue", [False, True])
def test_sigmoid_loss_matches_brute_force(with_queue):
    image, text = _unit(B, 0), _unit(B, 1)
    queue = (_unit(K, 2), _unit(K, 3)) if with_queue else (None, None)
    got = sigmoid_loss(image, text, torch.tensor(10.0), torch.tensor(-3.0), *queue)
    assert abs(got.item() - _brute_sigmoid(image, text, 10.0, -3.0, *queue)) < 1e-4


def test_sigmoid_loss_at_siglip_init_and_when_aligned():
    image = _unit(64, 0)
    # t = 10, b = -10: every pair starts near logit -10, so the loss is about log(1 + e^10) for the positives only
    start = sigmoid_loss(image, _unit(64, 1), torch.tensor(10.0), torch.tensor(-10.0)).item()
    assert abs(start - math.log1p(math.exp(10))) < 1.5
    orthonormal = torch.eye(D)  # positives at logit 30 - 10, negatives at -10
    assert sigmoid_loss(orthonormal, orthonormal, torch.tensor(30.0), torch.tensor(-10.0)).item() < 1e-3


@pytest.mark.parametrize("with_queue", [False, True])
def test_hard_negative_weighting_with_beta_and_tau_plus_zero_is_plain_info_nce(with_queue):
    image, text = _unit(B, 0), _unit(B, 1)
    queue = (_unit(K, 2), _unit(K, 3)) if with_queue else (None, None)
    for scale in (torch.tensor(3.0), torch.tensor(100.0)):  # 100: exp(logit) would overflow outside log space
        image_ = image.clone().requires_grad_(True)
        plain = info_nce(image_, text, scale, *queue)
        weighted = info_nce(image, text, scale, *queue, hard_negatives="weighted", beta=0.0, tau_plus=0.0)
        torch.testing.assert_close(weighted, plain)


def _hcl_row(beta, tau_plus, scale):
    """Robinson et al. 2021's loss of one row, written as in their code (no log space)."""
    def row_loss(logits, i):
        pos = math.exp(logits[i])
        neg = [math.exp(v) for j, v in enumerate(logits) if j != i]
        n = len(neg)
        imp = [v ** beta for v in neg]
        reweight = sum(w * v for w, v in zip(imp, neg)) / (sum(imp) / n)
        ng = max((-tau_plus * n * pos + reweight) / (1 - tau_plus), n * math.exp(-scale))
        return -math.log(pos / (pos + ng))
    return row_loss


@pytest.mark.parametrize("beta,tau_plus", [(1.0, 0.0), (0.5, 0.1), (2.0, 0.3)])
def test_hard_negative_weighting_matches_the_papers_formula(beta, tau_plus):
    image, text = _unit(B, 0), _unit(B, 1)
    queue = (_unit(K, 2), _unit(K, 3))
    got = info_nce(image, text, torch.tensor(5.0), *queue, hard_negatives="weighted", beta=beta, tau_plus=tau_plus)
    expected = _brute_info_nce(image, text, 5.0, *queue, row_loss=_hcl_row(beta, tau_plus, 5.0))
    assert abs(got.item() - expected) < 1e-4
    # beta > 0 puts weight on the hardest negatives: the loss grows
    assert got.item() > info_nce(image, text, torch.tensor(5.0), *queue).item() or tau_plus > 0


def test_semihard_picks_the_hardest_negative_below_the_positive():
    image, text = _unit(B, 0), _unit(B, 1)
    queue = (_unit(K, 2), _unit(K, 3))

    def row_loss(logits, i):
        below = [v for j, v in enumerate(logits) if j != i and v < logits[i]]
        neg = max(below) if below else min(v for j, v in enumerate(logits) if j != i)
        return math.log1p(math.exp(neg - logits[i]))

    got = info_nce(image, text, torch.tensor(5.0), *queue, hard_negatives="semihard")
    assert abs(got.item() - _brute_info_nce(image, text, 5.0, *queue, row_loss=row_loss)) < 1e-5


def test_weighted_loss_has_finite_gradients_when_debiasing_hits_the_floor():
    image = _unit(B, 0).requires_grad_(True)
    loss = info_nce(image, image.detach() + 0.0, torch.tensor(50.0), hard_negatives="weighted", beta=1.0, tau_plus=0.9)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(image.grad).all()


def test_head_parameters_are_not_zero_dimensional():
    """DeepSpeed broadcasts parameters viewed as bytes: a 0-dim tensor cannot be (deepspeed.initialize failed)."""
    for loss in ("infonce", "sigmoid"):
        head = ContrastiveHead(4, 6, 3, loss)
        assert all(p.ndim >= 1 for p in head.parameters())
        assert head.scale().ndim == 0
    assert abs(ContrastiveHead(4, 6, 3, "sigmoid").scale().item() - 10.0) < 1e-5
    assert ContrastiveHead(4, 6, 3, "sigmoid").bias().item() == -10.0
    assert ContrastiveHead(4, 6, 3, "infonce").bias() is None


def test_queue_is_a_ring_of_the_latest_rows_and_lives_in_the_state_dict():
    queue = EmbeddingQueue(5, 2)
    assert queue.negatives()[0].shape == (0, 2)
    rows = torch.arange(16.0).reshape(8, 2)
    queue.enqueue(rows[:3], -rows[:3])
    image, text = queue.negatives()
    assert torch.equal(image, rows[:3]) and torch.equal(text, -rows[:3])
    queue.enqueue(rows[3:7], -rows[3:7])  # wraps: rows 5, 6 overwrite 0, 1
    image, _ = queue.negatives()
    assert sorted(image[:, 0].tolist()) == sorted(rows[2:7, 0].tolist())
    queue.enqueue(rows, -rows)  # more than it holds: the last 5
    assert sorted(queue.negatives()[0][:, 0].tolist()) == sorted(rows[3:, 0].tolist())
    restored = EmbeddingQueue(5, 2)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.negatives()[0], queue.negatives()[0]) and int(restored.ptr) == int(queue.ptr)
    snapshot = queue.negatives()[0]
    queue.enqueue(rows[:2] + 100, rows[:2])
    assert not torch.equal(snapshot, queue.negatives()[0])  # negatives() is a copy a loss can keep for backward
