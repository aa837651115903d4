"""Vision backbones by name: ``create_backbone(name) -> (module, feature_dim)``.

Every backbone maps normalised float images [B,3,H,W] to pooled features
[B, feature_dim]; ``backbone_tokens`` gives its token-level features too
(cross-attention fusion). ``resnet50`` is torchvision's own model; a Hugging
Face CLIP / SigLIP checkpoint (Hub name or local folder) gives its vision tower
(engine.models._hf_towers); every other name goes through timm (imported
lazily, ``num_classes=0``). ``backbone_input_spec`` says what input size and
normalisation a backbone's weights expect; ``check_input_spec`` refuses data
settings that do not fit them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from engine.errors import UserError
from engine.registry import Registry


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be fetched or do not fit the model."""


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: Optional[str]  # pinned timm name (with pretrained tag); None = torchvision resnet50
    feature_dim: int  # size of the pooled features
    size_multiple: int = 32  # input height and width must be multiples of this
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    hf_path: Optional[str] = None  # Hugging Face CLIP/SigLIP checkpoint (Hub name or folder): its vision tower


BACKBONES: Registry = Registry("model.backbone", {
    "resnet50": BackboneSpec(None, 2048),  # torchvision, IMAGENET1K_V2
    "resnet18": BackboneSpec("resnet18.a1_in1k", 512),
    "resnet50_timm": BackboneSpec("resnet50.a1_in1k", 2048),
    "convnextv2_tiny": BackboneSpec("convnextv2_tiny.fcmae_ft_in22k_in1k", 768),
    "convnextv2_base": BackboneSpec("convnextv2_base.fcmae_ft_in22k_in1k", 1024),
    "efficientnet_b0": BackboneSpec("efficientnet_b0.ra_in1k", 1280),
    "efficientnet_b1": BackboneSpec("efficientnet_b1.ft_in1k", 1280),
    "efficientnetv2_s": BackboneSpec("tf_efficientnetv2_s.in21k_ft_in1k", 1280),
    "densenet121": BackboneSpec("densenet121.tv_in1k", 1024),
    "dinov2_vits14": BackboneSpec("vit_small_patch14_dinov2.lvd142m", 384, 14, {"dynamic_img_size": True}),
    "vit_b16": BackboneSpec("vit_base_patch16_224.augreg2_in21k_ft_in1k", 768, 16, {"dynamic_img_size": True}),
    "siglip_vitb16": BackboneSpec("vit_base_patch16_siglip_224.webli", 768, 16, {"dynamic_img_size": True}),
}, hint=" (or any timm model name, or a Hugging Face CLIP/SigLIP checkpoint: Hub name or local folder)")

# Classifier prefixes of the source models; their weights are dropped from a checkpoint.
_CLASSIFIER_PREFIXES = ("fc", "head", "classifier", "last_linear")


def resolve_backbone(name: str) -> BackboneSpec:
    """Registry alias -> spec; a CLIP/SigLIP folder or Hub name and any other timm model name pass through."""
    if name in BACKBONES:
        return BACKBONES[name]
    from engine.models._hf_towers import looks_like_hub_or_folder

    if looks_like_hub_or_folder(name):
        return BackboneSpec(None, feature_dim=0, size_multiple=1, hf_path=name)
    import timm

    if timm.is_model(name):
        return BackboneSpec(name, feature_dim=0)  # dim read from the built model
    return BACKBONES[name]  # unknown: a ValueError listing the aliases


def create_backbone(
    name: str,
    pretrained: bool = False,
    pretrained_path: Optional[str] = None,
    grad_checkpointing: bool = False,
) -> tuple[nn.Module, int]:
    """Build backbone ``name``; weights from ``pretrained_path`` if set, else the hub if ``pretrained``."""
    spec = resolve_backbone(name)
    if spec.hf_path:
        if pretrained_path:
            raise ValueError(f"model.pretrained_path is for timm/torchvision backbones; model.backbone={name!r} is a "
                             f"Hugging Face checkpoint whose weights come from it")
        model, dim = _build_hf(spec.hf_path)
        if grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model, dim
    from_hub = pretrained and not pretrained_path
    try:
        model, dim = _build(spec, from_hub)
    except OSError as e:  # no network / offline hub / missing cache: say which weights and what to do
        weights = spec.timm_name or "torchvision ResNet50_Weights.IMAGENET1K_V2"
        raise PretrainedWeightsError(
            f"model.backbone={name!r}: could not fetch pretrained weights {weights!r} ({type(e).__name__}: {e}). "
            f"If this machine is offline, download the weights elsewhere and set model.pretrained_path=/path/to/checkpoint "
            f"(or model.pretrained=false for random init)."
        ) from e
    if spec.feature_dim and dim != spec.feature_dim:
        raise AssertionError(f"backbone {name!r} gives {dim} features, registry declares {spec.feature_dim}")
    if pretrained_path:
        load_checkpoint(model, pretrained_path)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
        keep_norm_statistics_on_recompute(model)
    return model, dim


def keep_norm_statistics_on_recompute(model: nn.Module) -> None:
    """Gradient checkpointing runs a block's forward again during backward; a BatchNorm in train mode would then
    update its running statistics twice per step (momentum ~0.19 instead of 0.1, num_batches_tracked doubled).
    Hooks put them back after a forward that runs inside backward (the recompute)."""
    if not hasattr(torch._C, "_current_graph_task_id"):  # private API: without it, leave the statistics be
        return

    def stash(module, args):
        if module.training and module.track_running_stats and torch._C._current_graph_task_id() != -1:
            module._stats_before_recompute = [b.clone() for b in (module.running_mean, module.running_var,
                                                                   module.num_batches_tracked)]

    def restore(module, args, output):
        saved = module.__dict__.pop("_stats_before_recompute", None)
        if saved is not None:
            for buf, old in zip((module.running_mean, module.running_var, module.num_batches_tracked), saved):
                buf.copy_(old)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(stash)
            m.register_forward_hook(restore)


def _build(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, int]:
    if spec.timm_name is None:
        from engine.models._torchvision import resnet50

        return resnet50(pretrained)
    import timm

    model = timm.create_model(spec.timm_name, pretrained=pretrained, num_classes=0, **spec.kwargs)
    pooled, model.token_dim = _probe_sizes(model, spec.size_multiple)
    return model, pooled


def _probe_sizes(model: nn.Module, size_multiple: int) -> tuple[int, int]:
    """(pooled feature size, token channel size) read from one forward pass of a 1-image batch.

    timm's attributes disagree across families: ``num_features`` is the last feature map's channels, while
    MobileNetV3, GhostNet, LCNet, EfficientViT, HGNetV2 ... pool through a head conv to ``head_hidden_size``.
    The model's own output is the one size that is always right. A small input first (cheap); models that
    need their native size (fixed-size ViTs, window attention) get it.
    """
    native = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[1:])
    small = (size_multiple * -(-64 // size_multiple),) * 2  # 64, rounded up to the patch size
    was_training = model.training
    model.eval()  # batch of one: BatchNorm must not use (or update) batch statistics
    try:
        with torch.no_grad():
            for size in dict.fromkeys((small, native)):
                try:
                    feats = model.forward_features(torch.zeros(1, 3, *size))
                    break
                except (RuntimeError, AssertionError, ValueError):
                    if size == native:
                        raise
            pooled = model.forward_head(feats)  # what model(images) returns (num_classes=0)
    finally:
        model.train(was_training)
    return int(pooled.shape[-1]), int(feats.shape[-1] if _channels_last(model, feats) else feats.shape[1])


def _channels_last(model: nn.Module, feats: torch.Tensor) -> bool:
    """Whether ``forward_features`` gives tokens [B, N, C] or an NHWC map (Swin, MambaOut) rather than NCHW."""
    return feats.ndim == 3 or getattr(model, "output_fmt", "NCHW") == "NHWC"


def _hf_vision_config(path: str):
    """(family, config) of a checkpoint that has a vision tower; refuses other checkpoints by name."""
    from engine.models._hf_towers import FAMILIES, load_config, tower_family

    try:
        config = load_config(path)
    except OSError as e:
        raise PretrainedWeightsError(
            f"model.backbone={path!r}: could not load the Hugging Face checkpoint {path!r} ({type(e).__name__}: {e}). "
            f"Offline, the Hub cannot be reached: download it elsewhere (save_pretrained) and set model.backbone to "
            f"that local folder."
        ) from e
    family, towers = tower_family(config)
    if "vision" not in towers:
        kind = getattr(config, "model_type", "unknown")
        raise ValueError(f"model.backbone={path!r} is a {kind!r} checkpoint without a vision tower; a Hugging Face "
                         f"backbone must be one of {sorted(FAMILIES)} (full model or its vision tower)")
    return family, config


def _build_hf(path: str) -> tuple[nn.Module, int]:
    from engine.models._hf_towers import VisionTower, load_tower

    family, _ = _hf_vision_config(path)
    tower = VisionTower(load_tower(path, family, "vision"), family, path)
    return tower, tower.dim


def backbone_token_dim(model: nn.Module) -> int:
    """Channel size of ``backbone_tokens``' tokens."""
    return model.token_dim


def backbone_tokens(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features [B, dim] as ``model(images)``, tokens [B, N, token_dim]) from one forward pass.

    CNNs: the last feature map [B, C, H, W] flattened to H*W tokens; ViTs: every token (class/prefix tokens first);
    CLIP/SigLIP towers: last_hidden_state (layer-normed).
    """
    if hasattr(model, "forward_tokens"):  # torchvision ResNet-50, CLIP/SigLIP towers
        return model.forward_tokens(images)
    feats = model.forward_features(images)  # timm: checkpointed stages live in here
    pooled = model.forward_head(feats, pre_logits=True)
    if feats.ndim == 4:
        tokens = feats.flatten(1, 2) if _channels_last(model, feats) else feats.flatten(2).transpose(1, 2)
    else:
        tokens = feats
    return pooled, tokens


class InputSpec(NamedTuple):
    image_size: Optional[int]  # native input side of the weights; None = any (CNNs, dynamic-size timm ViTs)
    mean: tuple[float, float, float]  # normalisation the weights were trained with
    std: tuple[float, float, float]
    size_multiple: int  # input side must be a multiple of this (patch size of a ViT; 1 = any)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def backbone_input_spec(name: str) -> InputSpec:
    """Native input size and normalisation of backbone ``name`` (a CLIP/SigLIP checkpoint: from its config and
    preprocessor_config.json; timm: its pretrained config; torchvision: ImageNet)."""
    spec = resolve_backbone(name)
    if spec.hf_path:
        from engine.models._hf_towers import preprocessor_normalisation

        family, config = _hf_vision_config(spec.hf_path)
        vision = getattr(config, "vision_config", config)
        mean, std = preprocessor_normalisation(spec.hf_path, family)
        return InputSpec(vision.image_size, mean, std, vision.patch_size)
    patch = spec.size_multiple if spec.kwargs.get("dynamic_img_size") else 1
    if spec.timm_name is None:
        return InputSpec(None, IMAGENET_MEAN, IMAGENET_STD, 1)
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(spec.timm_name, allow_unregistered=True)
    mean = tuple(getattr(pcfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(pcfg, "std", None) or IMAGENET_STD)
    return InputSpec(None, mean, std, patch)


def check_input_spec(model_cfg, image_size: int, mean, std) -> None:
    """Refuse data settings the backbone's weights do not fit, naming the key to change.

    ``data.image_size`` must be a multiple of a ViT's patch size; with pretrained weights (CLIP/SigLIP
    checkpoints always, timm/torchvision with model.pretrained or model.pretrained_path) ``augment.mean`` /
    ``augment.std`` must be the weights' normalisation. Another size than a tower's native one is allowed:
    its position embeddings are interpolated (a warning says so).
    """
    from engine.config import ConfigError

    if not model_cfg.backbone:
        return
    spec = backbone_input_spec(model_cfg.backbone)
    name = model_cfg.backbone
    if image_size % spec.size_multiple:
        raise ConfigError(f"data.image_size={image_size} is not a multiple of model.backbone={name!r}'s patch size "
                          f"{spec.size_multiple} (native size {spec.image_size})")
    pretrained = bool(resolve_backbone(name).hf_path or model_cfg.pretrained or model_cfg.pretrained_path)
    if pretrained:
        for key, got, want in (("mean", mean, spec.mean), ("std", std, spec.std)):
            if len(got) != 3 or any(abs(float(a) - b) > 1e-3 for a, b in zip(got, want)):
                raise ConfigError(f"augment.{key}={list(got)} does not match the normalisation model.backbone={name!r} "
                                  f"was trained with: set augment.mean={list(spec.mean)} augment.std={list(spec.std)}")
    if spec.image_size and image_size != spec.image_size:
        warnings.warn(f"data.image_size={image_size} differs from model.backbone={name!r}'s native {spec.image_size}: "
                      f"its position embeddings are interpolated")


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a local backbone checkpoint, strict except for the source model's classifier.

    Accepts a plain state dict, ``{"state_dict"|"model": ...}`` wrappers, ``module.``
    prefixes and ``.safetensors`` files. Missing or unexpected keys raise, naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained_path={str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or k.split(".")[0] not in _CLASSIFIER_PREFIXES}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise PretrainedWeightsError(f"model.pretrained_path={str(path)!r} does not fit the backbone: {e}") from e
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"model.pretrained_path={str(path)!r} does not match the backbone: "
            f"{len(missing)} missing keys {missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}"
        )


def backbone_layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Parameter name -> depth (0 = stem), and the number of depths, for layer-wise LR decay."""
    if hasattr(model, "layer_ids"):
        return model.layer_ids()
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=False))
        ids = {name: int(lid) for lid, names in groups.items() for name in names}
        return ids, max(ids.values()) + 1
    return {name: 0 for name, _ in model.named_parameters()}, 1
