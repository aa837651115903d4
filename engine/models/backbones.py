"""Vision backbones by name: ``create_backbone(name) -> (module, feature_dim)``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

# Friendly alias -> pinned timm name. Anything else is passed to timm as is.
ALIASES: dict[str, str] = {
    "resnet18": "resnet18",
    "convnextv2_tiny": "convnextv2_tiny.fcmae_ft_in22k_in1k",
    "efficientnet_b0": "efficientnet_b0.ra_in1k",
}


def create_backbone(name: str, pretrained: bool = False, pretrained_path: Optional[str] = None) -> tuple[nn.Module, int]:
    """Build an image backbone that maps [B,3,H,W] to pooled features [B, feature_dim]."""
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights="IMAGENET1K_V2" if pretrained and not pretrained_path else None)
        dim = model.fc.in_features
        model.fc = nn.Identity()
    else:
        import timm

        timm_name = ALIASES.get(name, name)
        if not timm.is_model(timm_name.split(".")[0]):
            raise ValueError(f"model.backbone={name!r} is unknown; known aliases: {sorted(ALIASES) + ['resnet50']} (or any timm model name)")
        model = timm.create_model(timm_name, pretrained=pretrained and not pretrained_path, num_classes=0)
        dim = model.num_features
    if pretrained_path:
        state = torch.load(pretrained_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state), strict=False)
    return model, dim
