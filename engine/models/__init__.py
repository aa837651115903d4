"""Fusion models: vision backbones, text encoders, tabular branch, fusion strategies."""
from engine.models.config import ModelConfig
from engine.models.fusion import FusionModel, FusionOutput


def create_model(cfg: ModelConfig, num_classes: int, num_numeric: int = 0, cardinalities: list[int] | None = None) -> FusionModel:
    return FusionModel(cfg, num_classes, num_numeric, cardinalities)


__all__ = ["ModelConfig", "FusionModel", "FusionOutput", "create_model"]
