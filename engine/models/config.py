"""Config of the fusion model: which branches, how they are fused, what is trained."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

MODALITIES = ("image", "text", "tabular")


@dataclass
class ModelConfig:
    task: Literal["classify", "retrieval"] = "classify"  # fusion classifier, or image-text dual encoder (DualEncoderModel)
    # registry alias, timm name, or a Hugging Face CLIP/SigLIP checkpoint (Hub name or local folder; its vision
    # tower, with its own weights whatever model.pretrained says); null = no image branch
    backbone: Optional[str] = "resnet18"
    pretrained: bool = False  # load pretrained backbone weights (timm hub or pretrained_path)
    pretrained_path: Optional[str] = None  # local checkpoint for a timm/torchvision backbone (takes precedence over the hub)
    text_encoder: Optional[str] = "minilm"  # HF name, local path or alias (CLIP/SigLIP: its text tower); null = no text branch
    text_max_length: int = 64  # tokens kept per text (the cache stores exactly this many)
    text_pooling: Literal["auto", "cls", "mean"] = "auto"  # auto: CLIP/SigLIP towers' own pooling, mean for other encoders
    use_tabular: bool = True  # tabular MLP over data.numeric_columns / categorical_columns
    tabular_hidden: int = 64
    fusion: Literal["concat", "weighted_sum", "gated", "cross_attention"] = "concat"
    cross_attention: Literal["text_to_image", "both"] = "text_to_image"  # cross_attention fusion: who attends to whom
    cross_attention_heads: int = 4  # heads of the cross-attention blocks (fusion_dim must divide by it)
    fusion_dim: int = 256  # projection size for weighted_sum / gated (and the head's hidden size)
    gate: Literal["softmax", "sigmoid"] = "softmax"  # gated fusion: gates compete (softmax) or are independent (sigmoid)
    dropout: float = 0.1
    modality_dropout: float = 0.0  # probability of masking the image or text features of a sample in training
    modality_dropout_on: list[str] = field(default_factory=lambda: ["image", "text"])  # modalities modality_dropout may mask
    mask_modalities: list[str] = field(default_factory=list)  # modalities masked at evaluation (ablation: ["text"])
    aux_loss_weight: float = 0.0  # per-modality auxiliary heads' loss weight (0 = no aux heads)
    contrastive_weight: float = 0.0  # classify: weight of the auxiliary image-text contrastive loss (0 = off)
    contrastive_dim: int = 128  # size of the joint embedding (CLIP/SigLIP projections are reused when it matches)
    contrastive_loss: Literal["infonce", "sigmoid"] = "infonce"  # symmetric InfoNCE (CLIP) or pairwise sigmoid (SigLIP)
    queue_size: int = 0  # retrieval: past embeddings kept as extra negatives (MoCo queue); 0 = off
    momentum: float = 0.0  # retrieval: momentum copy of the towers fills the queue (e.g. 0.995); 0 = off
    # read at every loss call, so a training stage may change them: none, Robinson et al. 2021 weighting, semi-hard
    hard_negatives: Literal["none", "weighted", "semihard"] = "none"
    hard_negative_beta: float = 1.0  # weighted: concentration on hard negatives (0 = uniform)
    hard_negative_tau_plus: float = 0.0  # weighted: assumed class prior of false negatives, in [0, 1)
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
        for key in ("text_max_length", "tabular_hidden", "fusion_dim", "contrastive_dim", "cross_attention_heads"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("aux_loss_weight", "contrastive_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if self.contrastive_weight > 0 and (self.backbone is None or self.text_encoder is None):
            raise ValueError("model.contrastive_weight > 0 needs both an image backbone and a text_encoder")
        if self.task == "retrieval" and (self.backbone is None or self.text_encoder is None):
            raise ValueError("model.task=retrieval needs both model.backbone and model.text_encoder")
        if self.fusion == "cross_attention" and (self.backbone is None or self.text_encoder is None):
            raise ValueError("model.fusion=cross_attention needs both model.backbone and model.text_encoder")
        if self.fusion_dim % self.cross_attention_heads:
            raise ValueError(f"model.fusion_dim={self.fusion_dim} must divide by "
                             f"model.cross_attention_heads={self.cross_attention_heads}")
        if self.queue_size < 0:
            raise ValueError(f"model.queue_size must be >= 0, got {self.queue_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"model.momentum must be in [0, 1), got {self.momentum}")
        if self.task == "retrieval" and self.mask_modalities:  # DualEncoderModel has no fusion to mask: say so, not ignore it
            raise ValueError(f"model.mask_modalities={self.mask_modalities} masks a fusion classifier's branches; a "
                             "retrieval model (model.task=retrieval) scores the similarity of both towers' embeddings "
                             "and cannot drop either")
        if self.task == "classify" and (self.queue_size or self.momentum):
            raise ValueError("model.queue_size / model.momentum are for model.task=retrieval")
        if self.momentum and not self.queue_size:
            raise ValueError("model.momentum > 0 fills the queue: it needs model.queue_size > 0")
        self.check_hard_negatives()

    def check_hard_negatives(self) -> None:
        """Also called by the loss: a training stage may override these keys after construction."""
        if self.hard_negative_beta < 0:
            raise ValueError(f"model.hard_negative_beta must be >= 0, got {self.hard_negative_beta}")
        if not 0 <= self.hard_negative_tau_plus < 1:
            raise ValueError(f"model.hard_negative_tau_plus must be in [0, 1), got {self.hard_negative_tau_plus}")
        if self.hard_negatives not in ("none", "weighted", "semihard"):
            raise ValueError(f"model.hard_negatives={self.hard_negatives!r} is not one of ['none', 'weighted', 'semihard']")
        if self.hard_negatives != "none" and self.contrastive_loss != "infonce":
            raise ValueError(f"model.hard_negatives={self.hard_negatives} works on model.contrastive_loss=infonce, "
                             f"not {self.contrastive_loss}")
