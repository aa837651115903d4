"""CLIP-style image-text alignment: projections, a learnable temperature and InfoNCE.

In distributed runs the negatives are the whole global batch: embeddings are
gathered from every rank with ``torch.distributed`` (never DeepSpeed), and the
gradient flows into the local slice only; since every rank computes the loss of its
own rows, the averaged gradients equal those of the loss over the global batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ContrastiveHead(nn.Module):
    """Projects pooled image and text features to L2-normalised embeddings of contrastive_dim."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.image = nn.Linear(image_dim, dim, bias=False)
        self.text = nn.Linear(text_dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log_scale = math.log(max_scale)  # CLIP's clamp: keeps training stable

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image embeddings [B, dim], text embeddings [B, dim], logit scale (scalar))."""
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return F.normalize(self.image(image), dim=-1), F.normalize(self.text(text), dim=-1), scale


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows [sum_r B_r, ...] (local rows keep their gradient) and the offset of the local rows.

    Ranks may hold different batch sizes (rows are padded for the collective, then trimmed).
    Without an initialised process group this is the identity.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros(max(sizes), *x.shape[1:])
    padded[: x.shape[0]] = x.detach()
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    parts = [g[:n] for g, n in zip(gathered, sizes)]
    parts[rank] = x  # the only slice with a graph back to this rank's parameters
    return torch.cat(parts), sum(sizes[:rank])


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows (in-batch negatives, global batch when distributed).

    ``image`` and ``text`` are L2-normalised [B, D]; the loss is about log(global B) for unrelated
    embeddings and goes to zero when each image is closest to its own text.
    """
    all_image, offset = gather_with_grad(image)
    all_text, _ = gather_with_grad(text)
    targets = torch.arange(image.shape[0], device=image.device) + offset
    image_logits = (logit_scale * image @ all_text.T).float()
    text_logits = (logit_scale * text @ all_image.T).float()
    return (F.cross_entropy(image_logits, targets) + F.cross_entropy(text_logits, targets)) / 2
