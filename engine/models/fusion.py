"""The fusion classifier: image, text and tabular branches, fused, then a classifier head.

Modality masking (training-time ``modality_dropout`` and evaluation-time
``mask_modalities``) multiplies features by a [B, M] mask instead of skipping a
branch, so every parameter takes part in every step (DeepSpeed ZeRO waits forever
for a gradient that never comes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.models._encoders import EncoderStages
from engine.models.backbones import backbone_token_dim, backbone_tokens, create_backbone
from engine.models.config import ModelConfig
from engine.models.contrastive import ContrastiveHead
from engine.models.fusers import create_fuser
from engine.models.tabular import TabularMLP
from engine.models.text import TextEncoder


@dataclass
class FusionOutput:
    logits: torch.Tensor  # [B, C], in the model's compute dtype (the trainer casts to fp32)
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # per-modality heads [B, C] (aux_loss_weight > 0)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # "image"/"text" normalised [B, contrastive_dim]
    logit_scale: Optional[torch.Tensor] = None  # contrastive temperature (scalar), with the embeddings
    logit_bias: Optional[torch.Tensor] = None  # sigmoid contrastive loss's bias (scalar)
    modality_weights: Optional[torch.Tensor] = None  # [B, M] fusion weights/gates (weighted_sum, gated)


# Top-level submodule -> param group name (see FusionModel.param_groups).
_GROUP_OF = {"image": "backbone", "text": "text", "tabular": "tabular", "fuser": "fusion", "contrastive": "fusion",
             "head": "head", "aux_heads": "head"}


class FusionModel(EncoderStages):
    """Takes normalised float images [B,3,H,W], token ids/mask [B,L], numeric [B,N] and categorical [B,K] tensors.

    Inputs of a switched-off branch are ignored (pass empty tensors). ``self.modalities``
    lists the active branches in the order of the mask and the fusion weights.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, num_numeric: int = 0, cardinalities: Optional[list[int]] = None):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.mask_modalities = list(cfg.mask_modalities)  # evaluation-time masking; change freely for ablations
        dims: dict[str, int] = {}
        if cfg.backbone:
            self.image, dims["image"] = create_backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path, cfg.grad_checkpointing)
        if cfg.text_encoder:
            self.text = TextEncoder(cfg.text_encoder, cfg.text_pooling, cfg.grad_checkpointing, cfg.text_max_length)
            dims["text"] = self.text.dim
        if cfg.use_tabular and (num_numeric or cardinalities):
            self.tabular = TabularMLP(num_numeric, cardinalities or [], cfg.tabular_hidden, cfg.dropout)
            dims["tabular"] = self.tabular.dim
        if not dims:
            raise ValueError("model: no modality left (use_tabular=true but the data has no tabular columns)")
        self.modalities = list(dims)
        token_options = {}
        if cfg.fusion == "cross_attention":
            token_dims = {"image": backbone_token_dim(self.image), "text": self.text.token_dim}  # both: ModelConfig
            token_options = dict(modalities=self.modalities, token_dims=token_dims, direction=cfg.cross_attention,
                                 heads=cfg.cross_attention_heads)
        self.fuser = create_fuser(cfg.fusion, list(dims.values()), cfg.fusion_dim, cfg.gate, **token_options)
        self.needs_tokens = getattr(self.fuser, "needs_tokens", False)
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(self.fuser.out_dim, cfg.fusion_dim), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fusion_dim, num_classes)
        )
        if cfg.aux_loss_weight > 0:
            self.aux_heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
        if cfg.contrastive_weight > 0:
            self.contrastive = ContrastiveHead(dims["image"], dims["text"], cfg.contrastive_dim, cfg.contrastive_loss)

    # --- what the data pipeline needs to know ------------------------------------------------

    @property
    def tokenizer_name(self) -> Optional[str]:
        """Loadable name/path of the text encoder's tokenizer (for ``text.load_tokenizer``), None without text."""
        return self.text.path if "text" in self.modalities else None

    # --- forward -------------------------------------------------------------------------------

    def features(self, images, input_ids, attention_mask, numeric, categorical) -> dict[str, torch.Tensor]:
        return self._encode(images, input_ids, attention_mask, numeric, categorical)[0]

    def _encode(self, images, input_ids, attention_mask, numeric, categorical) -> tuple[dict, dict]:
        """(pooled features per modality, token features per modality; empty unless the fuser needs them)."""
        feats, tokens = {}, {}
        if "image" in self.modalities:
            if self.needs_tokens:
                feats["image"], tokens["image"] = backbone_tokens(self.image, images)
            else:
                feats["image"] = self.image(images)
        if "text" in self.modalities:
            if self.needs_tokens:
                feats["text"], tokens["text"] = self.text.forward_tokens(input_ids, attention_mask)
            else:
                feats["text"] = self.text(input_ids, attention_mask)
        if "tabular" in self.modalities:
            feats["tabular"] = self.tabular(numeric, categorical)
        return feats, tokens

    def modality_mask(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[B, M] of 1 (keep) / 0 (mask): random per sample in training, ``mask_modalities`` in evaluation."""
        mask = torch.ones(batch_size, len(self.modalities), device=device, dtype=dtype)
        if self.training and self.cfg.modality_dropout > 0:
            droppable = torch.tensor([m in self.cfg.modality_dropout_on for m in self.modalities], device=device)
            drop = (torch.rand(batch_size, len(self.modalities), device=device) < self.cfg.modality_dropout) & droppable
            # never mask every modality of a sample: give one back, chosen at random
            all_gone = drop.all(dim=1)
            keep = torch.randint(len(self.modalities), (batch_size,), device=device)
            drop &= ~(all_gone.unsqueeze(1) & F.one_hot(keep, len(self.modalities)).bool())
            mask = (~drop).to(dtype)
        elif not self.training:
            for i, m in enumerate(self.modalities):
                if m in self.mask_modalities:
                    mask[:, i] = 0
        return mask

    def forward(self, images, input_ids, attention_mask, numeric, categorical) -> FusionOutput:
        feats, tokens = self._encode(images, input_ids, attention_mask, numeric, categorical)
        dtype = feats[self.modalities[0]].dtype  # fuse in the branches' dtype, no upcast
        raw = [feats[m].to(dtype) for m in self.modalities]
        mask = self.modality_mask(raw[0].shape[0], raw[0].device, dtype)
        masked = [f * mask[:, i : i + 1] for i, f in enumerate(raw)]
        if self.needs_tokens:
            fused, weights = self.fuser(masked, mask, {m: t.to(dtype) for m, t in tokens.items()}, {"text": attention_mask})
        else:
            fused, weights = self.fuser(masked, mask)
        out = FusionOutput(logits=self.head(fused), modality_weights=weights)
        # Auxiliary heads and the contrastive loss see the unmasked features: they train each branch on its own.
        if hasattr(self, "aux_heads"):
            out.aux_logits = {m: self.aux_heads[m](f) for m, f in zip(self.modalities, raw)}
        if hasattr(self, "contrastive"):
            image, text, out.logit_scale = self.contrastive(feats["image"], feats["text"])
            out.logit_bias = self.contrastive.bias()
            out.embeddings = {"image": image, "text": text}
        return out

    # --- training stages -----------------------------------------------------------------------

    def _encoders(self) -> Iterator[nn.Module]:
        for name in ("image", "text"):
            if name in self.modalities:
                yield getattr(self, name)

    def param_groups(self, lr_scales: Optional[dict[str, float]] = None) -> list[dict]:
        """Every parameter (trainable now or after unfreezing) in exactly one group.

        Each group: ``name`` (backbone, text, tabular, fusion, head), ``params``, ``lr_scale``
        (``lr_scales[name]``, else 1; the trainer passes none and applies optim.backbone_lr_scale /
        text_lr_scale by group name, engine.training.optim), ``layer_id`` (depth in its module,
        0 = input side, num_layers - 1 = output side; None for modules without depth),
        ``num_layers``, and ``no_weight_decay`` (every 1-d parameter: biases, norms, scalars; plus what the timm
        backbone lists in its own no_weight_decay(), e.g. ViT position embeddings).
        Layer-wise decay: lr * lr_scale * decay ** (num_layers - 1 - layer_id).
        """
        return self._grouped_parameters(_GROUP_OF, lr_scales)
