"""Fusion models: vision backbones, text encoders, tabular branch, fusion strategies; the dual encoder.

    config.py         ModelConfig: which branches, how they are fused, what is trained
    backbones.py      BACKBONES and create_backbone: aliases to pinned timm names, any timm name, a CLIP/SigLIP tower
    text.py           TEXT_ENCODERS, TextEncoder and its tokenizer: any Hugging Face encoder by alias, Hub name or folder
    tabular.py        the tabular branch: normalised numerics and categorical embeddings into an MLP
    fusers.py         FUSERS: concat, weighted_sum, gated, cross_attention
    fusion.py         FusionModel: the branches, fused, then the classifier head (and auxiliary heads)
    contrastive.py    projections, temperature, InfoNCE / SigLIP losses, the memory queue, hard negatives
    dual.py           DualEncoderModel (model.task: retrieval): two towers in a joint space
    _encoders.py      what both models share: freezing, norm statistics, gradient checkpointing, parameter groups
    _hf_towers.py     loading Hugging Face CLIP / SigLIP towers
    _torchvision.py   torchvision's ResNet-50 with stage-wise gradient checkpointing

``create_model(cfg, num_classes, ...)`` builds the one the config asks for; no model code imports DeepSpeed.
"""
from engine.models.backbones import (
    BACKBONES,
    InputSpec,
    PretrainedWeightsError,
    backbone_input_spec,
    check_input_spec,
    create_backbone,
)
from engine.models.config import ModelConfig
from engine.models.dual import DualEncoderModel, DualOutput, check_queue_size
from engine.models.fusers import FUSERS
from engine.models.fusion import FusionModel, FusionOutput
from engine.models.text import TEXT_ENCODERS, load_tokenizer, tokenize


def create_model(cfg: ModelConfig, num_classes: int, num_numeric: int = 0,
                 cardinalities: list[int] | None = None) -> FusionModel | DualEncoderModel:
    """The fusion classifier, or the dual encoder for ``model.task: retrieval`` (``num_classes`` unused there)."""
    if cfg.task == "retrieval":
        return DualEncoderModel(cfg, num_numeric, cardinalities)
    return FusionModel(cfg, num_classes, num_numeric, cardinalities)


__all__ = [
    "BACKBONES", "FUSERS", "TEXT_ENCODERS", "ModelConfig", "FusionModel", "FusionOutput", "PretrainedWeightsError",
    "DualEncoderModel", "DualOutput", "InputSpec", "backbone_input_spec", "check_input_spec", "check_queue_size",
    "create_backbone", "create_model", "load_tokenizer", "tokenize",
]
