"""Image-text alignment: projections, a learnable temperature (and bias), InfoNCE, the SigLIP sigmoid loss,
a queue of past embeddings and hard-negative weighting.

The losses are pure functions of embeddings and settings. In distributed runs the
negatives are the whole global batch: embeddings are gathered from every rank
with a ``torch.distributed`` all_gather that passes gradients back (never
DeepSpeed), so a rank's loss also sends gradient to the other ranks' embeddings
(they sit in its softmax denominators / its pairs). Every rank computes the loss
of its own rows, scaled so that the rank-averaged gradients (what DeepSpeed
applies) equal those of the loss over the global batch, also with unequal batch
sizes. (Gathering the other ranks' rows detached, as a first version did, loses
that denominator gradient: 28% off on 2 ranks in a test.)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Initial log logit scale per loss: CLIP's temperature 0.07; SigLIP's t = log 10 with bias -10 (Zhai et al. 2023).
INIT_LOG_SCALE = {"infonce": math.log(1 / 0.07), "sigmoid": math.log(10.0)}
INIT_BIAS = -10.0
MAX_LOG_SCALE = {"infonce": math.log(100.0), "sigmoid": None}  # CLIP clamps its scale at 100; SigLIP does not


class ContrastiveHead(nn.Module):
    """Projects pooled image and text features to L2-normalised embeddings of contrastive_dim.

    ``logit_scale`` (and ``logit_bias``, sigmoid loss only) have shape [1], not []: DeepSpeed broadcasts
    parameters as bytes at initialisation, which a 0-dim tensor cannot be viewed as.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int, loss: str = "infonce"):
        super().__init__()
        if loss not in INIT_LOG_SCALE:
            raise ValueError(f"model.contrastive_loss={loss!r} is not one of {sorted(INIT_LOG_SCALE)}")
        self.image = nn.Linear(image_dim, dim, bias=False)
        self.text = nn.Linear(text_dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.full((1,), INIT_LOG_SCALE[loss]))
        self.logit_bias = nn.Parameter(torch.full((1,), INIT_BIAS)) if loss == "sigmoid" else None
        self.max_log_scale = MAX_LOG_SCALE[loss]

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) as a 0-dim tensor (clamped for InfoNCE, as CLIP does: keeps training stable)."""
        log_scale = self.logit_scale if self.max_log_scale is None else self.logit_scale.clamp(max=self.max_log_scale)
        return log_scale.exp().squeeze(0)

    def bias(self) -> Optional[torch.Tensor]:
        return None if self.logit_bias is None else self.logit_bias.squeeze(0)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(image), dim=-1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(text), dim=-1)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image embeddings [B, dim], text embeddings [B, dim], logit scale (scalar))."""
        return self.embed_image(image), self.embed_text(text), self.scale()


class EmbeddingQueue(nn.Module):
    """Ring buffer of past (image, text) embeddings used as extra negatives (MoCo, He et al. 2020).

    Buffers, so the queue is saved with the model and restored on resume. Fed with the global (gathered)
    batch, so every rank holds the same queue. Until it is full only the filled rows are used.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))  # rows filled so far (<= size)

    def negatives(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the filled rows (the loss may keep them for backward while the queue moves on)."""
        n = int(self.count)
        return self.image[:n].clone(), self.text[:n].clone()

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor) -> None:
        """Write rows [n, dim] over the oldest ones (only the last ``size`` rows when n > size)."""
        image, text = image[-self.size:], text[-self.size:]
        n, ptr = image.shape[0], int(self.ptr)  # a CPU-GPU sync (as int(count) in negatives()): small next to a step
        rows = (torch.arange(n, device=self.image.device) + ptr) % self.size
        self.image[rows] = image.to(self.image.dtype)
        self.text[rows] = text.to(self.text.dtype)
        self.ptr.fill_((ptr + n) % self.size)
        self.count.fill_(min(self.size, int(self.count) + n))


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-shaped [M, ...] tensors into [world, M, ...]; backward sums every rank's gradient for
    this rank's slot (an all_reduce: supported by gloo and NCCL alike, unlike reduce_scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank = dist.get_rank()
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """All ranks' rows [sum_r B_r, ...] with gradient back to every rank, the offset of the local rows and
    the world size.

    Ranks may hold different batch sizes (rows are padded for the collective, then trimmed).
    Without an initialised process group this is the identity.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0, 1
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = F.pad(x, (0, 0, 0, max(sizes) - x.shape[0]))  # [max B, D], differentiable
    gathered = _GatherRows.apply(padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)]), sum(sizes[:rank]), world


def gather_detached(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows [sum_r B_r, ...] without gradient (what the queue stores); ``x`` itself without a group."""
    with torch.no_grad():
        return gather_with_grad(x.detach())[0]


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
             queue_image: Optional[torch.Tensor] = None, queue_text: Optional[torch.Tensor] = None,
             hard_negatives: str = "none", beta: float = 1.0, tau_plus: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows (in-batch negatives, global batch when distributed), in fp32.

    ``image`` and ``text`` are L2-normalised [B, D]; the loss is about log(global B) for unrelated
    embeddings and goes to zero when each image is closest to its own text. ``queue_text`` / ``queue_image``
    [K, D] add negatives: image->text logits run over [batch texts; queued texts], text->image likewise.
    ``hard_negatives``: "none", "weighted" (Robinson et al. 2021, ``beta``/``tau_plus``; beta = tau_plus = 0 is
    plain InfoNCE) or "semihard" (per row, the most similar negative less similar than the positive; the least
    similar negative when there is none, as TensorFlow's semi-hard triplet loss). Distributed, this rank's rows'
    sum is scaled by world / global B: averaged over ranks, that is the global batch's mean.
    """
    all_image, offset, world = gather_with_grad(image)
    all_text, _, _ = gather_with_grad(text)
    targets = torch.arange(image.shape[0], device=image.device) + offset
    scale = logit_scale.float()
    total = 0.0
    for rows, columns, queue in ((image, all_text, queue_text), (text, all_image, queue_image)):
        if queue is not None and queue.shape[0]:
            columns = torch.cat([columns, queue.to(columns.dtype)])
        logits = scale * (rows.float() @ columns.float().T)
        total = total + _row_losses(logits, targets, scale, hard_negatives, beta, tau_plus).sum()
    return total * (world / all_image.shape[0]) / 2


def _row_losses(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, hard_negatives: str,
                beta: float, tau_plus: float) -> torch.Tensor:
    """Per-row loss [b] of logits [b, N] whose positive sits in column ``targets``."""
    if hard_negatives == "none":
        return F.cross_entropy(logits, targets, reduction="none")
    positive = logits.gather(1, targets[:, None]).squeeze(1)
    is_positive = F.one_hot(targets, logits.shape[1]).bool()
    if hard_negatives == "semihard":
        with torch.no_grad():
            candidates = (logits < positive[:, None]) & ~is_positive
            hardest = logits.masked_fill(~candidates, -math.inf).argmax(1)
            easiest = logits.masked_fill(is_positive, math.inf).argmin(1)
            chosen = torch.where(candidates.any(1), hardest, easiest)
        return F.softplus(logits.gather(1, chosen[:, None]).squeeze(1) - positive)
    if hard_negatives != "weighted":
        raise ValueError(f"model.hard_negatives={hard_negatives!r} is not one of ['none', 'weighted', 'semihard']")
    # Robinson et al. 2021, eq. of their code, in log space (exp(logit) overflows at scale 100):
    # imp = exp(beta * l) / mean(exp(beta * l)); Ng = (sum(imp * exp(l)) - tau_plus * n * exp(l+)) / (1 - tau_plus),
    # clamped below at n * exp(-scale) (every negative at cosine -1); loss = -log(exp(l+) / (exp(l+) + Ng)).
    n = logits.shape[1] - 1
    negatives = logits.masked_fill(is_positive, -math.inf)
    log_weights = F.log_softmax((beta * logits).masked_fill(is_positive, -math.inf), dim=1) + math.log(n)  # mean(imp) = 1
    log_reweighted = torch.logsumexp(log_weights + negatives, dim=1)
    floor = math.log(n) - scale
    if tau_plus:
        log_debias = math.log(tau_plus * n) + positive
        gap = (log_debias - log_reweighted).clamp(max=-1e-6)  # keeps the unused branch finite (no NaN gradients)
        log_ng = torch.where(log_debias - log_reweighted < -1e-6,
                             log_reweighted + torch.log1p(-gap.exp()) - math.log(1 - tau_plus), torch.full_like(positive, -math.inf))
    else:
        log_ng = log_reweighted
    log_ng = torch.maximum(log_ng, floor.expand_as(log_ng))
    return torch.logaddexp(positive, log_ng) - positive


def sigmoid_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                 queue_image: Optional[torch.Tensor] = None, queue_text: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), in fp32: -1/|B| sum_ij log sigmoid(z_ij (t x_i.y_j + b)),
    z = 1 for matching pairs, -1 otherwise, over the global batch when distributed.

    Each rank takes the pairs of its own images with every rank's texts (each pair once over the ranks), scaled
    by world / global B, so the rank average is the global batch's loss, gradients included. Queued embeddings
    [K, D] are negatives of every image (``queue_text``) and of every text (``queue_image``).
    """
    all_text, offset, world = gather_with_grad(text)
    scale, bias = logit_scale.float(), logit_bias.float()
    logits = scale * (image.float() @ all_text.float().T) + bias
    signs = -torch.ones_like(logits)
    signs[torch.arange(image.shape[0], device=image.device), torch.arange(image.shape[0], device=image.device) + offset] = 1
    total = -F.logsigmoid(signs * logits).sum()
    for rows, queue in ((image, queue_text), (text, queue_image)):
        if queue is not None and queue.shape[0]:
            total = total - F.logsigmoid(-(scale * (rows.float() @ queue.float().T) + bias)).sum()
    return total * (world / all_text.shape[0])


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: Optional[torch.Tensor], cfg, queue_image: Optional[torch.Tensor] = None,
                     queue_text: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loss ``cfg`` (a ModelConfig) asks for, its keys read now: a training stage may have changed them."""
    cfg.check_hard_negatives()
    if cfg.contrastive_loss == "sigmoid":
        return sigmoid_loss(image, text, logit_scale, logit_bias, queue_image, queue_text)
    return info_nce(image, text, logit_scale, queue_image, queue_text, cfg.hard_negatives,
                    cfg.hard_negative_beta, cfg.hard_negative_tau_plus)
