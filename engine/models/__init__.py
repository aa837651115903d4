"""Fusion models: vision backbones, text encoders, tabular branch, fusion strategies."""
from engine.models.backbones import BACKBONES, PretrainedWeightsError, create_backbone
from engine.models.config import ModelConfig
from engine.models.fusers import FUSERS
from engine.models.fusion import FusionModel, FusionOutput
from engine.models.text import TEXT_ENCODERS, load_tokenizer, tokenize


def create_model(cfg: ModelConfig, num_classes: int, num_numeric: int = 0, cardinalities: list[int] | None = None) -> FusionModel:
    return FusionModel(cfg, num_classes, num_numeric, cardinalities)


__all__ = [
    "BACKBONES", "FUSERS", "TEXT_ENCODERS", "ModelConfig", "FusionModel", "FusionOutput", "PretrainedWeightsError",
    "create_backbone", "create_model", "load_tokenizer", "tokenize",
]
