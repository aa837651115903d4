"""The fusion classifier: image, text and tabular branches, fused, then a classifier head."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from engine.models.backbones import create_backbone
from engine.models.config import ModelConfig
from engine.models.tabular import TabularMLP
from engine.models.text import TextEncoder


@dataclass
class FusionOutput:
    logits: torch.Tensor  # [B, C]
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # per-modality heads


class FusionModel(nn.Module):
    """Takes normalised float images [B,3,H,W], token ids/mask, numeric and categorical tensors."""

    def __init__(self, cfg: ModelConfig, num_classes: int, num_numeric: int = 0, cardinalities: Optional[list[int]] = None):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        dims = {}
        if cfg.backbone:
            self.image, dims["image"] = create_backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path)
        if cfg.text_encoder:
            self.text = TextEncoder(cfg.text_encoder, cfg.text_pooling)
            dims["text"] = self.text.dim
        if cfg.use_tabular and (num_numeric or cardinalities):
            self.tabular = TabularMLP(num_numeric, cardinalities or [], cfg.tabular_hidden, cfg.dropout)
            dims["tabular"] = self.tabular.dim
        self.modalities = list(dims)
        fused = sum(dims.values())
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(fused, cfg.fusion_dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.fusion_dim, num_classes))

    def features(self, images, input_ids, attention_mask, numeric, categorical) -> dict[str, torch.Tensor]:
        feats = {}
        if "image" in self.modalities:
            feats["image"] = self.image(images)
        if "text" in self.modalities:
            feats["text"] = self.text(input_ids, attention_mask)
        if "tabular" in self.modalities:
            feats["tabular"] = self.tabular(numeric, categorical)
        return feats

    def forward(self, images, input_ids, attention_mask, numeric, categorical) -> FusionOutput:
        feats = self.features(images, input_ids, attention_mask, numeric, categorical)
        fused = torch.cat([feats[m].float() for m in self.modalities], dim=1)
        return FusionOutput(logits=self.head(fused.to(self.head[1].weight.dtype)))
