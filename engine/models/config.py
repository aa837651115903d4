"""Config of the fusion model: which branches, how they are fused, what is trained."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

MODALITIES = ("image", "text", "tabular")


@dataclass
class ModelConfig:
    backbone: Optional[str] = "resnet18"  # registry alias or timm name; null = no image branch
    pretrained: bool = False  # load pretrained backbone weights (timm hub or pretrained_path)
    pretrained_path: Optional[str] = None  # local checkpoint for the backbone (takes precedence over the hub)
    text_encoder: Optional[str] = "minilm"  # HF name, local path or alias; null = no text branch
    text_max_length: int = 64  # tokens kept per text (the cache stores exactly this many)
    text_pooling: Literal["cls", "mean"] = "mean"
    use_tabular: bool = True  # tabular MLP over data.numeric_columns / categorical_columns
    tabular_hidden: int = 64
    fusion: Literal["concat", "weighted_sum", "gated"] = "concat"
    fusion_dim: int = 256  # projection size for weighted_sum / gated (and the head's hidden size)
    gate: Literal["softmax", "sigmoid"] = "softmax"  # gated fusion: gates compete (softmax) or are independent (sigmoid)
    dropout: float = 0.1
    modality_dropout: float = 0.0  # probability of masking the image or text features of a sample in training
    modality_dropout_on: list[str] = field(default_factory=lambda: ["image", "text"])  # modalities modality_dropout may mask
    mask_modalities: list[str] = field(default_factory=list)  # modalities masked at evaluation (ablation: ["text"])
    aux_loss_weight: float = 0.0  # per-modality auxiliary heads' loss weight (0 = no aux heads)
    contrastive_weight: float = 0.0  # CLIP-style image-text InfoNCE loss weight (0 = off)
    contrastive_dim: int = 128
    grad_checkpointing: bool = False  # backbone and text encoder recompute activations

    def __post_init__(self):
        for key in ("mask_modalities", "modality_dropout_on"):
            for m in getattr(self, key):
                if m not in MODALITIES:
                    raise ValueError(f"model.{key}: unknown modality {m!r} (one of {list(MODALITIES)})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"model.modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.backbone is None and self.text_encoder is None and not self.use_tabular:
            raise ValueError("model: every modality is off (backbone, text_encoder, use_tabular)")
        for key in ("text_max_length", "tabular_hidden", "fusion_dim", "contrastive_dim"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("aux_loss_weight", "contrastive_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if self.contrastive_weight > 0 and (self.backbone is None or self.text_encoder is None):
            raise ValueError("model.contrastive_weight > 0 needs both an image backbone and a text_encoder")
