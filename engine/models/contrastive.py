"""Image-text alignment parts of a model: projections with a learnable temperature (and bias), a queue of past
embeddings, and the gathers that make the negatives the global batch.

The contrastive losses themselves (InfoNCE, SigLIP's sigmoid loss, hard negatives) live with every other loss in
``engine/training/losses.py``. In distributed runs their negatives are the whole global batch: ``gather_with_grad``
collects every rank's embeddings with a ``torch.distributed`` all_gather that passes gradients back (never
DeepSpeed), so a rank's loss also sends gradient to the other ranks' embeddings (they sit in its softmax
denominators / its pairs). (Gathering the other ranks' rows detached, as a first version did, loses that
denominator gradient: 28% off on 2 ranks in a test.)
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
