"""Config of the fusion model: which branches, how they are fused, what is trained."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class ModelConfig:
    backbone: Optional[str] = "resnet18"  # registry alias or timm name; null = no image branch
    pretrained: bool = False  # load pretrained backbone weights (timm hub or pretrained_path)
    pretrained_path: Optional[str] = None  # local checkpoint for the backbone
    text_encoder: Optional[str] = "minilm"  # HF name, local path or alias; null = no text branch
    text_max_length: int = 64  # tokens kept per text (the cache stores exactly this many)
    text_pooling: Literal["cls", "mean"] = "mean"
    use_tabular: bool = True  # tabular MLP over data.numeric_columns / categorical_columns
    tabular_hidden: int = 64
    fusion: Literal["concat", "weighted_sum", "gated"] = "concat"
    fusion_dim: int = 256  # projection size for weighted_sum / gated (and the head's hidden size)
    dropout: float = 0.1
    modality_dropout: float = 0.0  # probability of masking the image or text features of a sample in training
    mask_modalities: list[str] = field(default_factory=list)  # modalities masked at evaluation (ablation: ["text"])
    aux_loss_weight: float = 0.0  # per-modality auxiliary heads' loss weight (0 = no aux heads)
    contrastive_weight: float = 0.0  # CLIP-style image-text InfoNCE loss weight (0 = off)
    contrastive_dim: int = 128
    grad_checkpointing: bool = False  # backbone and text encoder recompute activations

    def __post_init__(self):
        for m in self.mask_modalities:
            if m not in ("image", "text", "tabular"):
                raise ValueError(f"model.mask_modalities: unknown modality {m!r} (image, text, tabular)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"model.modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.backbone is None and self.text_encoder is None and not self.use_tabular:
            raise ValueError("model: every modality is off (backbone, text_encoder, use_tabular)")
