"""torchvision's ResNet-50, unchanged except for stage-wise gradient checkpointing.

Subclassing (rather than wrapping) keeps the state dict keys byte-identical to
``torchvision.models.resnet50()``, so its checkpoints load as they are.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import Bottleneck, ResNet


class CheckpointedResNet(ResNet):
    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Stem = 0, ``layer1``..``layer4`` = 1..4 (for layer-wise LR decay)."""
        ids = {}
        for name, _ in self.named_parameters():
            match = re.match(r"layer(\d+)\.", name)
            ids[name] = int(match.group(1)) if match else (0 if name.startswith(("conv1", "bn1")) else 5)
        return ids, max(ids.values()) + 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map [B, 2048, H/32, W/32]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            # use_reentrant=False: gradients flow even when the stage's inputs and weights are frozen
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, 2048], the last feature map as tokens [B, H*W/1024, 2048])."""
        feats = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(feats), 1)), feats.flatten(2).transpose(1, 2)


def resnet50(pretrained: bool) -> tuple[nn.Module, int]:
    """torchvision ResNet-50 (IMAGENET1K_V2 weights when pretrained) with ``fc`` replaced by Identity."""
    model = CheckpointedResNet(Bottleneck, [3, 4, 6, 3])
    if pretrained:
        from torchvision.models import ResNet50_Weights

        model.load_state_dict(ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False))
    dim = model.fc.in_features
    model.fc = nn.Identity()
    model.token_dim = dim
    return model, dim
