"""Fusion strategies: per-modality features [B, d_m] -> one fused vector [B, out_dim].

Every fuser takes the features already multiplied by the modality mask and the
mask itself [B, M] (1 = present, 0 = masked), so a masked modality contributes
nothing and the fused vector does not depend on its input. Fusers that weight the
modalities return the per-sample weights [B, M] (for inspection), else None.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _renormalise(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero masked modalities' weights and rescale the rest to sum to one per sample."""
    weights = weights * mask
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)


class ConcatFusion(nn.Module):
    """Concatenate the features; the head sees every modality's own coordinates."""

    def __init__(self, dims: list[int], fusion_dim: int, gate: str = "softmax"):
        super().__init__()
        self.out_dim = sum(dims)

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return torch.cat(feats, dim=1), None


class WeightedSumFusion(nn.Module):
    """Project each modality to fusion_dim and sum with learned softmax weights (shared by all samples)."""

    def __init__(self, dims: list[int], fusion_dim: int, gate: str = "softmax"):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, fusion_dim) for d in dims)
        self.weight_logits = nn.Parameter(torch.zeros(len(dims)))
        self.out_dim = fusion_dim

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        z = torch.stack([proj(f) for proj, f in zip(self.proj, feats)], dim=1)  # [B, M, D]
        weights = _renormalise(self.weight_logits.softmax(0).to(z.dtype).expand_as(mask), mask)
        return (weights.unsqueeze(-1) * z).sum(1), weights


class GatedFusion(nn.Module):
    """Project each modality to fusion_dim and sum with per-sample gates computed from all features."""

    def __init__(self, dims: list[int], fusion_dim: int, gate: str = "softmax"):
        super().__init__()
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"model.gate={gate!r} is not one of ['softmax', 'sigmoid']")
        self.proj = nn.ModuleList(nn.Linear(d, fusion_dim) for d in dims)
        self.gate = nn.Linear(sum(dims), len(dims))
        self.activation = gate
        self.out_dim = fusion_dim

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        z = torch.stack([proj(f) for proj, f in zip(self.proj, feats)], dim=1)  # [B, M, D]
        gate_logits = self.gate(torch.cat(feats, dim=1))
        if self.activation == "softmax":  # modalities compete for one unit of weight
            gates = _renormalise(gate_logits.softmax(1), mask)
        else:  # each modality is let through independently
            gates = gate_logits.sigmoid() * mask
        return (gates.unsqueeze(-1) * z).sum(1), gates


FUSERS: dict[str, type[nn.Module]] = {"concat": ConcatFusion, "weighted_sum": WeightedSumFusion, "gated": GatedFusion}


def create_fuser(name: str, dims: list[int], fusion_dim: int, gate: str = "softmax") -> nn.Module:
    if name not in FUSERS:
        raise ValueError(f"model.fusion={name!r} is unknown; known: {sorted(FUSERS)}")
    return FUSERS[name](dims, fusion_dim, gate)
