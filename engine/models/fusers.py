"""Fusion strategies: per-modality features [B, d_m] -> one fused vector [B, out_dim].

Every fuser takes the features already multiplied by the modality mask and the
mask itself [B, M] (1 = present, 0 = masked), so a masked modality contributes
nothing and the fused vector does not depend on its input. Fusers that weight the
modalities return the per-sample weights [B, M] (for inspection), else None.
A fuser with ``needs_tokens = True`` also takes token-level features (see
CrossAttentionFusion) and keeps the same masking property.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from engine.registry import Registry


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


class _CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention then MLP; ``gate`` [B, 1, 1] scales the attention update (0 = the other modality is
    masked: nothing of it gets through)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_padding: Optional[torch.Tensor],
                gate: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        update, _ = self.attention(self.norm_q(x), kv, kv, key_padding_mask=context_padding, need_weights=False)
        x = x + gate * update
        return x + self.mlp(self.norm_mlp(x))


class CrossAttentionFusion(nn.Module):
    """Early fusion (ViLT / FLAVA style): text tokens attend to image tokens (``direction="both"``: and image
    tokens to text tokens), then each side's first token -- the branch's own pooled feature, prepended so every
    tower parameter (SigLIP's pooling head, ...) takes part -- is concatenated with the other modalities' features.

    Needs token features: ``forward(feats, mask, tokens)`` with ``tokens = {"image": [B, N, d], "text": [B, L, d]}``
    and ``tokens_mask = {"text": [B, L] of 1 = token, 0 = padding}``. Masking: the attention update from a masked
    modality is multiplied by 0 and a masked side's output is 0, so a masked modality contributes nothing.
    Tabular (or other pooled) features are concatenated after.
    """

    needs_tokens = True

    def __init__(self, dims: list[int], fusion_dim: int, gate: str = "softmax", *, modalities: list[str],
                 token_dims: dict[str, int], direction: str = "text_to_image", heads: int = 4):
        super().__init__()
        if "image" not in modalities or "text" not in modalities:
            raise ValueError("model.fusion=cross_attention needs both an image backbone and a text encoder")
        if direction not in ("text_to_image", "both"):
            raise ValueError(f"model.cross_attention={direction!r} is not one of ['text_to_image', 'both']")
        self.modalities, self.direction = list(modalities), direction
        self.image_index, self.text_index = modalities.index("image"), modalities.index("text")
        self.pooled = nn.ModuleDict({m: nn.Linear(dims[modalities.index(m)], fusion_dim) for m in ("image", "text")})
        self.tokens = nn.ModuleDict({m: nn.Linear(token_dims[m], fusion_dim) for m in ("image", "text")})
        self.text_to_image = _CrossAttentionBlock(fusion_dim, heads)
        if direction == "both":
            self.image_to_text = _CrossAttentionBlock(fusion_dim, heads)
        self.norm = nn.LayerNorm(fusion_dim)
        self.out_dim = 2 * fusion_dim + sum(d for m, d in zip(modalities, dims) if m not in ("image", "text"))

    def _sequence(self, m: str, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pooled[m](pooled).unsqueeze(1), self.tokens[m](tokens.to(pooled.dtype))], dim=1)

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor, tokens: dict[str, torch.Tensor],
                tokens_mask: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        image_on = mask[:, self.image_index, None, None]
        text_on = mask[:, self.text_index, None, None]
        image = self._sequence("image", feats[self.image_index], tokens["image"])
        text = self._sequence("text", feats[self.text_index], tokens["text"])
        text_padding = torch.cat([torch.zeros_like(tokens_mask["text"][:, :1]), tokens_mask["text"]], dim=1) == 0
        attended_text = self.text_to_image(text, image, None, image_on)
        if self.direction == "both":
            image = self.image_to_text(image, text, text_padding, text_on)
        fused = [self.norm(attended_text[:, 0]) * text_on[:, 0], self.norm(image[:, 0]) * image_on[:, 0]]
        fused += [f for i, f in enumerate(feats) if i not in (self.image_index, self.text_index)]
        return torch.cat(fused, dim=1), None


FUSERS: Registry = Registry("model.fusion", [("concat", ConcatFusion), ("weighted_sum", WeightedSumFusion),
                                            ("gated", GatedFusion), ("cross_attention", CrossAttentionFusion)])


def create_fuser(name: str, dims: list[int], fusion_dim: int, gate: str = "softmax", **token_options) -> nn.Module:
    """``token_options`` (modalities, token_dims, direction, heads) go to fusers that need token features."""
    cls = FUSERS[name]  # an unknown name: a ValueError listing the known ones
    return cls(dims, fusion_dim, gate, **token_options) if getattr(cls, "needs_tokens", False) else cls(dims, fusion_dim, gate)
