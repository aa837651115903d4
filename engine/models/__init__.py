"""Fusion models: vision backbones, text encoders, tabular branch, fusion strategies; the dual encoder."""
from engine.models.backbones import (BACKBONES, InputSpec, PretrainedWeightsError, backbone_input_spec, check_input_spec,
                                     create_backbone)
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
