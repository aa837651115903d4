"""What every model with an image and a text encoder shares: freezing them, keeping their norm statistics
fixed while frozen, and gradient checkpointing. FusionModel and DualEncoderModel list their encoders in
``_encoders()``; the rest is here once."""
from __future__ import annotations

from typing import Iterator

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
