"""The image-text dual encoder (``model.task: retrieval``): two towers, projections to a joint space, a
learnable temperature; its loss is ``engine.training.losses.retrieval_loss``.

Any backbone and text encoder of the registries work, CLIP/SigLIP towers included. When both towers come
from the same CLIP or SigLIP checkpoint and ``model.contrastive_dim`` is its joint size, the projections, the
temperature (and SigLIP's bias) start from the checkpoint, so the model starts zero-shot ready.

Extra negatives: ``model.queue_size`` keeps past embeddings of the global batch (identical on every rank; a
checkpoint holds them). With ``model.momentum`` a slowly moving copy of the towers and projections
(MoCo) embeds what is queued; the trainer calls ``momentum_update()`` after each optimizer step. The batch
itself is always embedded by the trained towers, so gradients flow to both sides as in CLIP.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from engine.models._encoders import EncoderStages
from engine.models.backbones import create_backbone, resolve_backbone
from engine.models.config import ModelConfig
from engine.models.contrastive import ContrastiveHead, EmbeddingQueue
from engine.models.text import TextEncoder

# Top-level submodule -> param group name (the names FusionModel.param_groups uses; engine.training.optim).
_GROUP_OF = {"image": "backbone", "text": "text", "contrastive": "head"}
_UNTRAINED = ("queue", "momentum_towers")  # buffers, and the momentum copy (moved by momentum_update, never by the optimizer)


@dataclass
class DualOutput:
    image_emb: torch.Tensor  # [B, contrastive_dim], L2-normalised, in the model's compute dtype
    text_emb: torch.Tensor  # [B, contrastive_dim], L2-normalised
    logit_scale: torch.Tensor  # exp of the learnable log scale (scalar)
    logit_bias: Optional[torch.Tensor] = None  # learnable bias (scalar), model.contrastive_loss=sigmoid only
    queued_image: Optional[torch.Tensor] = None  # what this batch adds to the queue (momentum towers' embeddings)
    queued_text: Optional[torch.Tensor] = None


def check_queue_size(queue_size: int, dataset_size: int, global_batch_size: int) -> None:
    """Refuse a queue that must hold the current batch's own pairs: with ``queue_size + global batch`` above the
    training set's size, some queued negative is an earlier embedding of a sample in the batch."""
    from engine.config import ConfigError

    if queue_size and queue_size + global_batch_size > dataset_size:
        raise ConfigError(f"model.queue_size={queue_size} plus the global batch of {global_batch_size} exceeds the "
                          f"{dataset_size} training samples: the queue would hold the batch's own pairs as negatives; "
                          f"use model.queue_size <= {max(0, dataset_size - global_batch_size)}")


def _same_checkpoint(cfg: ModelConfig, image: nn.Module, text: TextEncoder) -> Optional[str]:
    """The checkpoint both towers come from (a CLIP/SigLIP one), else None."""
    from engine.models.text import resolve_text_encoder

    spec = resolve_backbone(cfg.backbone)
    family = getattr(image, "family", None)
    if spec.hf_path and family and family == text.family and spec.hf_path == resolve_text_encoder(cfg.text_encoder):
        return spec.hf_path
    return None


class DualEncoderModel(EncoderStages):
    """Takes normalised float images [B,3,H,W] and token ids/mask [B,L]; tabular inputs are accepted (the trainer
    passes every batch field) and unused: a retrieval model has no tabular branch."""


    def __init__(self, cfg: ModelConfig, num_numeric: int = 0, cardinalities: Optional[list[int]] = None):
        super().__init__()
        if cfg.backbone is None or cfg.text_encoder is None:
            raise ValueError("model.task=retrieval needs both model.backbone and model.text_encoder")
        self.cfg = cfg
        self.modalities = ["image", "text"]
        self.image, image_dim = create_backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path, cfg.grad_checkpointing)
        self.text = TextEncoder(cfg.text_encoder, cfg.text_pooling, cfg.grad_checkpointing, cfg.text_max_length)
        self.contrastive = ContrastiveHead(image_dim, self.text.dim, cfg.contrastive_dim, cfg.contrastive_loss)
        checkpoint = _same_checkpoint(cfg, self.image, self.text)
        if checkpoint:
            self._init_from_checkpoint(checkpoint)
        if cfg.queue_size:
            self.queue = EmbeddingQueue(cfg.queue_size, cfg.contrastive_dim)
        if cfg.momentum:
            self.momentum_towers = nn.ModuleDict({k: copy.deepcopy(getattr(self, k)) for k in ("image", "text", "contrastive")})
            self.momentum_towers.requires_grad_(False)
            self.momentum_towers.eval()
        self._momentum_master: Optional[list[torch.Tensor]] = None

    def _init_from_checkpoint(self, path: str) -> None:
        """CLIP: its visual/text projections and logit scale; SigLIP (pooled outputs already joint): identity
        projections, its logit scale and bias. Only when the sizes and the loss match, else a warning says why not."""
        from engine.models._hf_towers import read_checkpoint_tensors

        family, head, dim = self.image.family, self.contrastive, self.cfg.contrastive_dim
        if self.text.pooling != "tower":
            warnings.warn(f"model.text_pooling={self.cfg.text_pooling}: {path!r}'s projections expect its own text "
                          f"pooling (text_pooling=auto); projections start random")
            return
        if family == "clip":
            tensors = read_checkpoint_tensors(path, ["visual_projection.weight", "text_projection.weight", "logit_scale"])
            joint = tensors["visual_projection.weight"].shape[0] if "visual_projection.weight" in tensors else None
        else:
            tensors = read_checkpoint_tensors(path, ["logit_scale", "logit_bias"])
            joint = self.text.dim if self.text.dim == self.image.dim else None
        if joint != dim:
            warnings.warn(f"model.contrastive_dim={dim} differs from {path!r}'s joint size {joint}: projections start "
                          f"random (set model.contrastive_dim={joint} to start from the pretrained ones)")
            return
        with torch.no_grad():
            if family == "clip":
                head.image.weight.copy_(tensors["visual_projection.weight"])
                head.text.weight.copy_(tensors["text_projection.weight"])
            else:
                head.image.weight.copy_(torch.eye(dim))
                head.text.weight.copy_(torch.eye(dim))
            native_loss = "infonce" if family == "clip" else "sigmoid"
            if self.cfg.contrastive_loss == native_loss and "logit_scale" in tensors:
                head.logit_scale.copy_(tensors["logit_scale"].reshape(1))
                if head.logit_bias is not None and "logit_bias" in tensors:
                    head.logit_bias.copy_(tensors["logit_bias"].reshape(1))

    # --- what the data pipeline needs to know ------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        """Loadable name/path of the text tower's tokenizer (for ``text.load_tokenizer``)."""
        return self.text.path

    # --- forward -------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [B, contrastive_dim] (evaluation / retrieval index)."""
        return self.contrastive.embed_image(self.image(images))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings [B, contrastive_dim]."""
        return self.contrastive.embed_text(self.text(input_ids, attention_mask))

    def forward(self, images, input_ids, attention_mask, numeric=None, categorical=None) -> DualOutput:
        out = DualOutput(self.encode_image(images), self.encode_text(input_ids, attention_mask),
                         self.contrastive.scale(), self.contrastive.bias())
        if hasattr(self, "queue") and self.training:
            if hasattr(self, "momentum_towers"):
                with torch.no_grad():
                    towers = self.momentum_towers
                    out.queued_image = towers["contrastive"].embed_image(towers["image"](images))
                    out.queued_text = towers["contrastive"].embed_text(towers["text"](input_ids, attention_mask))
            else:
                out.queued_image, out.queued_text = out.image_emb.detach(), out.text_emb.detach()
        return out

    @torch.no_grad()
    def momentum_update(self) -> None:
        """Move the momentum towers towards the trained ones: m <- momentum * m + (1 - momentum) * p (no-op without).

        Low-precision weights (bf16/fp16 under DeepSpeed) are averaged in an fp32 copy: a 0.005 step is below
        bf16's resolution and would otherwise be rounded away. Float buffers (norm statistics) follow likewise.
        """
        if not hasattr(self, "momentum_towers"):
            return
        online = [t for k in ("image", "text", "contrastive")
                  for t in (*getattr(self, k).parameters(), *_float_buffers(getattr(self, k)))]
        slow = [t for k in ("image", "text", "contrastive")
                for t in (*self.momentum_towers[k].parameters(), *_float_buffers(self.momentum_towers[k]))]
        if self._momentum_master is None or self._momentum_master[0].device != slow[0].device:
            self._momentum_master = [t.detach().float().clone() for t in slow]
        weight = 1.0 - self.cfg.momentum
        for master, m, p in zip(self._momentum_master, slow, online):
            master.lerp_(p.float(), weight)
            m.copy_(master)

    # --- training stages -----------------------------------------------------------------------

    def _encoders(self) -> Iterator[nn.Module]:
        yield self.image
        yield self.text

    def train(self, mode: bool = True) -> "DualEncoderModel":
        super().train(mode)  # EncoderStages: frozen towers keep their norm statistics
        if hasattr(self, "momentum_towers"):
            self.momentum_towers.eval()  # no dropout in the keys; its statistics follow the trained towers'
        return self

    def param_groups(self, lr_scales: Optional[dict[str, float]] = None) -> list[dict]:
        """Every trainable parameter (now or after unfreezing) in exactly one group, as FusionModel.param_groups:
        ``backbone`` (image tower), ``text``, ``head`` (projections, scale, bias); the momentum copy is not
        trained by the optimizer and has no group."""
        return self._grouped_parameters(_GROUP_OF, lr_scales, skip=_UNTRAINED)


def _float_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b for b in module.buffers() if b.is_floating_point()]
