"""Hugging Face CLIP / SigLIP towers: loading, the vision tower as a backbone, shared helpers.

A checkpoint is a Hub name or a local folder written by ``save_pretrained``: a
full dual encoder (CLIPModel / SiglipModel) or one tower of it. Its weights are
always loaded (a tower is a pretrained model, like a text encoder); missing
weights are refused, never randomly initialised. A Hub name that cannot be
reached (offline) fails naming the weights and how to use a local folder.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class TowerFamily:
    vision_class: str  # transformers class of the vision tower
    text_class: str
    mean: tuple[float, float, float]  # normalisation the family was trained with (preprocessor_config.json wins)
    std: tuple[float, float, float]


FAMILIES: dict[str, TowerFamily] = {
    "clip": TowerFamily("CLIPVisionModel", "CLIPTextModel", (0.48145466, 0.4578275, 0.40821073),
                        (0.26862954, 0.26130258, 0.27577711)),
    "siglip": TowerFamily("SiglipVisionModel", "SiglipTextModel", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# config.json model_type -> (family, which towers the checkpoint holds)
_MODEL_TYPES = {
    "clip": ("clip", {"vision", "text"}), "clip_vision_model": ("clip", {"vision"}), "clip_text_model": ("clip", {"text"}),
    "siglip": ("siglip", {"vision", "text"}), "siglip_vision_model": ("siglip", {"vision"}),
    "siglip_text_model": ("siglip", {"text"}),
}


def looks_like_hub_or_folder(name: str) -> bool:
    """A local folder with a config.json, or an ``org/name`` Hub id (timm and registry names have no slash)."""
    path = Path(name)
    return (path / "config.json").is_file() or ("/" in name and not path.exists() and not name.startswith(("hf-hub:", "hf_hub:")))


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a load report listing the other tower's weights as unexpected: expected here."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_config(path: str):
    """The checkpoint's config (OSError when the Hub cannot be reached or the folder has none)."""
    from transformers import AutoConfig

    with _quiet_transformers():
        return AutoConfig.from_pretrained(path, trust_remote_code=False)


def tower_family(config) -> tuple[Optional[str], set[str]]:
    """(family, towers held) of a checkpoint config; (None, set()) for any other model (BERT, ...)."""
    return _MODEL_TYPES.get(getattr(config, "model_type", ""), (None, set()))


def load_tower(path: str, family: str, tower: str) -> nn.Module:
    """The ``tower`` ("vision" / "text") model of ``path`` in fp32, every weight from the checkpoint."""
    import transformers

    cls = getattr(transformers, getattr(FAMILIES[family], f"{tower}_class"))
    with _quiet_transformers():
        model, info = cls.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        from engine.models.backbones import PretrainedWeightsError

        raise PretrainedWeightsError(f"{path!r}: the checkpoint lacks {len(missing)} weights of its {tower} tower "
                                     f"{sorted(missing)[:8]}; it would start from random values")
    return model


def set_hf_grad_checkpointing(model: nn.Module, enable: bool) -> None:
    """Gradient checkpointing of a transformers model, non-reentrant (gradients pass through frozen layers)."""
    # transformers >= 5.x renamed gradient_checkpointing_* to activation_checkpointing_* (old names warn)
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def hf_layer_ids(names: list[str], num_layers: int) -> tuple[dict[str, int], int]:
    """Parameter name -> depth: embeddings (and CLIP's pre-layernorm) 0, encoder layer i -> i + 1, the rest last."""
    ids = {}
    for name in names:
        match = re.search(r"\.layers?\.(\d+)\.", name)
        if match:
            ids[name] = int(match.group(1)) + 1
        else:
            ids[name] = 0 if ("embed" in name or "pre_layrnorm" in name) else num_layers + 1
    return ids, max(ids.values()) + 1


def preprocessor_normalisation(path: str, family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std of the checkpoint's preprocessor_config.json, else the family's."""
    try:
        from transformers.utils import cached_file

        file = cached_file(path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        file = None
    if file:
        cfg = json.loads(Path(file).read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(float(v) for v in cfg["image_mean"]), tuple(float(v) for v in cfg["image_std"])
    return FAMILIES[family].mean, FAMILIES[family].std


def read_checkpoint_tensors(path: str, keys: list[str]) -> dict[str, torch.Tensor]:
    """Named tensors of a safetensors checkpoint (single file or sharded); those it lacks are left out."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def cached(name):
        try:
            return cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            return None

    files: dict[str, list[str]] = {}
    index = cached("model.safetensors.index.json")
    if index:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        for key in keys:
            if key in weight_map:
                files.setdefault(weight_map[key], []).append(key)
    elif cached("model.safetensors"):
        files["model.safetensors"] = list(keys)
    out = {}
    for name, wanted in files.items():
        with safe_open(cached(name), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in wanted if k in f.keys()})
    return out


class VisionTower(nn.Module):
    """A CLIP / SigLIP vision tower as a backbone: normalised images [B,3,H,W] -> pooled features [B, dim].

    Pooling is the tower's own: CLIP's post-layernormed class token, SigLIP's attention-pooling head.
    Inputs at another size than the tower's ``image_size`` (a multiple of ``patch_size``) get bicubically
    interpolated position embeddings (``interpolate_pos_encoding``), as timm's dynamic_img_size ViTs do.
    """

    grad_checkpointing: bool = False

    def __init__(self, model: nn.Module, family: str, path: str):
        super().__init__()
        self.model = model
        self.family, self.path = family, path
        self.dim: int = model.config.hidden_size
        self.token_dim: int = model.config.hidden_size
        self.image_size: int = model.config.image_size
        self.patch_size: int = model.config.patch_size
        if family == "siglip" and not getattr(model, "use_head", True):
            raise ValueError(f"model.backbone={path!r}: this SigLIP vision tower has no pooling head (vision_use_head=false)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        set_hf_grad_checkpointing(self.model, enable)

    def layer_ids(self) -> tuple[dict[str, int], int]:
        return hf_layer_ids([n for n, _ in self.named_parameters()], self.model.config.num_hidden_layers)

    def no_weight_decay(self) -> set[str]:
        """Position embeddings, the class token and the pooling probe (timm excludes their counterparts)."""
        return {n for n, _ in self.named_parameters()
                if n.endswith(("position_embedding.weight", "class_embedding", "head.probe"))}

    def _run(self, images: torch.Tensor):
        resize = tuple(images.shape[-2:]) != (self.image_size, self.image_size)
        return self.model(pixel_values=images, interpolate_pos_encoding=resize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images).pooler_output

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, dim], every token [B, N, token_dim]; CLIP's class token first, layer-normed like it)."""
        out = self._run(images)
        tokens = out.last_hidden_state  # SigLIP: already post-layernormed
        if self.family == "clip":
            tokens = self.model.post_layernorm(tokens)
        return out.pooler_output, tokens
