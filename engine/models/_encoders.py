"""What every model with an image and a text encoder shares: freezing them, keeping their norm statistics
fixed while frozen, gradient checkpointing, and the parameter groups the optimizer builds from. FusionModel
and DualEncoderModel list their encoders in ``_encoders()``; the rest is here once."""
from __future__ import annotations

from typing import Iterator, Optional

from torch import nn


class EncoderStages(nn.Module):
    """Mixin: ``set_frozen``, a ``train()`` that keeps frozen encoders' BatchNorm in eval, ``set_grad_checkpointing``."""

    frozen: bool = False

    def _encoders(self) -> Iterator[nn.Module]:
        raise NotImplementedError

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the image and text encoders; frozen, their norm statistics stay fixed."""
        self.frozen = frozen
        for encoder in self._encoders():
            encoder.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # frozen encoders must not update BatchNorm running statistics
            for encoder in self._encoders():
                for module in encoder.modules():
                    if isinstance(module, nn.modules.batchnorm._NormBase):
                        module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder activations in backward (non-reentrant: frozen parts pass gradients on)."""
        for encoder in self._encoders():
            encoder.set_grad_checkpointing(enable)

    def _grouped_parameters(self, group_of: dict[str, str], lr_scales: Optional[dict[str, float]] = None,
                            skip: tuple[str, ...] = ()) -> list[dict]:
        """Every parameter but those under ``skip`` in exactly one group, keyed by (group name, layer id, no decay);
        ``group_of`` maps each top-level submodule to its group name (see FusionModel.param_groups)."""
        from engine.models.backbones import backbone_layer_ids

        image, text = getattr(self, "image", None), getattr(self, "text", None)
        depth: dict[str, tuple[dict[str, int], int]] = {}
        if image is not None:
            depth["backbone"] = backbone_layer_ids(image)
        if text is not None:
            depth["text"] = text.layer_ids()
        lr_scale = lr_scales or {}
        no_decay_names = set(image.no_weight_decay()) if hasattr(image, "no_weight_decay") else set()
        groups: dict[tuple, dict] = {}
        for full_name, param in self.named_parameters():
            top, _, local = full_name.partition(".")
            if top in skip:
                continue
            name = group_of[top]  # KeyError here = a new submodule that needs a group
            ids, num_layers = depth.get(name, ({}, 1))
            layer_id = ids.get(local) if name in depth else None
            no_decay = param.ndim <= 1 or (top == "image" and local in no_decay_names)
            key = (name, layer_id, no_decay)
            if key not in groups:
                groups[key] = {"name": name, "params": [], "lr_scale": lr_scale.get(name, 1.0), "layer_id": layer_id,
                               "num_layers": num_layers, "no_weight_decay": no_decay}
            groups[key]["params"].append(param)
        return list(groups.values())
