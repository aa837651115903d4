"""Every check of the user's inputs that can be made before DeepSpeed starts.

``check_run(cfg, resume)`` runs at the top of ``train()``, on every rank, before
the process group, the data or the model exist: card and precision, the
DeepSpeed pass-through keys, the backbone and text encoder (an offline Hub name
fails here, not after the data is tokenized), the run folder (never replace a
run, something to ``--resume``, writable), the manifest, batch arithmetic
against the data, the caches of the cache backends, and a resumed model
against its checkpoint's config. Every failure is a ``UserError`` naming the
key/file and the fix (exit 2).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine import hardware
from engine.config import Config, ConfigError
from engine.data.context import DataContext
from engine.data.manifest import select_split, split_limit
from engine.errors import CheckpointError
from engine.models.config import ModelConfig
from engine.training.distributed import launch_rank_world, local_device
from engine.training.run_dir import check_run_folder, move_old_run_aside
from engine.training.wrap import deepspeed_config

# Model keys that change how the model runs, not which parameters it has: free to change on --resume.
RUNTIME_MODEL_KEYS = frozenset({"dropout", "modality_dropout", "modality_dropout_on", "mask_modalities",
                                "grad_checkpointing", "pretrained", "pretrained_path", "hard_negatives",
                                "hard_negative_beta", "hard_negative_tau_plus"})
# Weights whose value may change on --resume, but not whether they are 0 (that adds or drops heads / towers).
PRESENCE_MODEL_KEYS = frozenset({"aux_loss_weight", "contrastive_weight", "momentum"})
SHAPE_DATA_KEYS = ("numeric_columns", "categorical_columns")  # the tabular branch's input sizes


@dataclass
class CheckedRun:
    ctx: DataContext  # the validated manifest and what derives from it
    precision: str


def check_run(cfg: Config, resume: bool) -> CheckedRun:
    _, world = launch_rank_world()
    precision = hardware.choose_precision(hardware.device_info(local_device()), cfg.train.precision)
    deepspeed_config(cfg, precision, world)  # a pass-through typo, batch arithmetic of deepspeed.extra
    check_models(cfg.model)
    check_run_folder(cfg, resume)
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length,
                      required_splits=("train", "val", "test") if cfg.eval.test else ("train", "val"))
    check_batches(cfg, ctx, world)
    check_model_inputs(cfg, ctx, world)
    check_caches(cfg, ctx)
    if resume:
        check_resume_fits(cfg, ctx)
    move_old_run_aside(cfg, resume)
    return CheckedRun(ctx, precision)


def check_models(m: ModelConfig) -> None:
    """The backbone and text encoder can be built here, without building them."""
    if m.backbone:
        from engine.models.backbones import resolve_backbone

        try:
            spec = resolve_backbone(m.backbone)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if m.pretrained_path and not Path(m.pretrained_path).is_file():
            raise ConfigError(f"model.pretrained_path={m.pretrained_path!r} does not exist")
        if getattr(spec, "hf_path", None):  # a CLIP/SigLIP tower: always loads its weights
            _check_hub_tower(m.backbone, spec.hf_path)
        elif m.pretrained and not m.pretrained_path:
            _check_hub_weights(m.backbone, spec.timm_name)
    if m.text_encoder:  # its tokenizer: an offline Hub name fails here (TextEncoderUnavailable), in a second
        from engine.models.text import load_tokenizer

        load_tokenizer(m.text_encoder)


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _check_hub_weights(name: str, timm_name: str | None) -> None:
    """Offline, pretrained backbone weights must already be in the Hugging Face or torch hub cache."""
    if not _offline():
        return  # they will be downloaded
    import torch

    if timm_name is None:  # torchvision resnet50
        from torchvision.models import ResNet50_Weights

        weights, hf_id, url = "torchvision ResNet50_Weights.IMAGENET1K_V2", None, ResNet50_Weights.IMAGENET1K_V2.url
    else:
        import timm

        try:
            pcfg = timm.models.get_pretrained_cfg(timm_name)
        except Exception:  # noqa: BLE001 -- no pretrained config to look for; create_backbone reports it
            return
        if pcfg is None:
            return
        weights, hf_id, url = timm_name, getattr(pcfg, "hf_hub_id", None), getattr(pcfg, "url", None)
    if hf_id:
        from huggingface_hub import try_to_load_from_cache

        if any(isinstance(try_to_load_from_cache(hf_id, f), str) for f in ("model.safetensors", "pytorch_model.bin",
                                                                            "open_clip_pytorch_model.bin")):
            return
    if url and (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file():
        return
    from engine.models.backbones import PretrainedWeightsError

    raise PretrainedWeightsError(
        f"model.backbone={name!r}: pretrained weights {weights!r} are not in the local cache and the hub is offline "
        f"(HF_HUB_OFFLINE). Download the weights elsewhere and set model.pretrained_path=/path/to/checkpoint "
        f"(or model.pretrained=false for random init).")


def _check_hub_tower(name: str, path: str) -> None:
    """Offline, a Hub tower must be in the local Hugging Face cache (a local folder is checked when it loads)."""
    if Path(path).exists() or not _offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return
    from engine.models.backbones import PretrainedWeightsError

    raise PretrainedWeightsError(
        f"model.backbone={name!r}: the checkpoint is not in the local Hugging Face cache and the hub is offline "
        f"(HF_HUB_OFFLINE); download it elsewhere (save_pretrained) and set model.backbone to that folder")


def check_batches(cfg: Config, ctx: DataContext, world: int) -> None:
    """One batch per rank, and one optimizer update per epoch, must fit in the training split."""
    n = len(select_split(ctx.manifest, "train", split_limit(cfg.data, "train"), cfg.run.seed))
    bs, accum = cfg.loader.batch_size, cfg.train.grad_accum
    batches = n // (bs * world)
    if batches == 0:
        raise ConfigError(f"loader.batch_size={bs}: the train split of {ctx.manifest.path} has {n} samples, fewer than "
                          f"one batch of {bs} on each of {world} rank(s); lower loader.batch_size")
    if cfg.train.max_steps_per_epoch:
        batches = min(batches, cfg.train.max_steps_per_epoch * accum)
    if batches < accum:
        raise ConfigError(f"train.grad_accum={accum}: an epoch has {batches} batches per rank (train split {n} samples, "
                          f"loader.batch_size={bs}, {world} rank(s)), fewer than one update; lower train.grad_accum")


def check_caches(cfg: Config, ctx: DataContext) -> None:
    """The cache backends' caches exist, match these settings and hold fresh pixels (CacheError with the build
    command otherwise). Opened again by the loaders: a second stat per image, the price of failing before
    DeepSpeed's start-up rather than after it."""
    if cfg.loader.backend not in ("cache", "dali_cache"):
        return
    from engine.data.cache.reader import open_cache

    for split in ("train", "val", "test") if cfg.eval.test else ("train", "val"):
        open_cache(cfg, ctx, split)


def check_resume_fits(cfg: Config, ctx: DataContext) -> None:
    """The model being resumed must have the checkpoint's parameters: compare the configs, name the keys that differ."""
    from engine.training.checkpoint import checkpoint_config

    folder = cfg.run_dir / "checkpoints"
    saved, source = checkpoint_config(folder, "last"), f"{folder}/last"
    run_yaml = cfg.run_dir / "config.yaml"
    recorded = yaml.safe_load(run_yaml.read_text()) if run_yaml.is_file() else {}
    if saved is None:  # checkpoints written before the config was stored beside them
        saved, source = recorded, str(run_yaml)
    now = json.loads(json.dumps(cfg.to_dict()))  # tuples as lists, as the saved copies hold them
    diffs = [f"{k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in model_differences(saved or {}, now)]
    classes = (recorded or {}).get("provenance", {}).get("classes")
    if classes is not None and list(classes) != list(ctx.classes):
        diffs.append(f"classes: {len(classes)} in the checkpoint's data, {len(ctx.classes)} in {ctx.manifest.path}")
    if diffs:
        raise CheckpointError(f"--resume: the model differs from the one checkpointed in {source}: " + "; ".join(diffs)
                              + ". Resume with the checkpoint's settings, or start a fresh run.name")


def model_differences(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    """(key, saved, now) for every model-shaping key that differs between two ``Config.to_dict()`` trees."""
    out = []
    saved_model, now_model = saved.get("model", {}), now.get("model", {})
    for key in sorted(set(saved_model) | set(now_model)):
        old, new = saved_model.get(key), now_model.get(key)
        if key in RUNTIME_MODEL_KEYS or key not in saved_model:  # absent: a setting newer than the checkpoint
            continue
        if old != new and (key not in PRESENCE_MODEL_KEYS or bool(old) != bool(new)):
            out.append((f"model.{key}", old, new))
    for key in SHAPE_DATA_KEYS:
        old, new = saved.get("data", {}).get(key), now.get("data", {}).get(key)
        if old is not None and list(old) != list(new or []):
            out.append((f"data.{key}", old, new))
    return out


def check_model_inputs(cfg: Config, ctx: DataContext, world: int) -> None:
    """What the model needs of the data: a tower's input size and normalisation, text to encode, and for a
    retrieval run no mixing and a queue the training set can fill."""
    from engine.models import check_input_spec, check_queue_size

    check_input_spec(cfg.model, cfg.data.image_size, cfg.augment.mean, cfg.augment.std)
    if cfg.model.text_encoder and not cfg.data.text_column:
        raise ConfigError(f"model.text_encoder={cfg.model.text_encoder!r} but data.text_column is null: the text branch "
                          "would see no tokens; set model.text_encoder: null (no text branch) or name the text column")
    if cfg.model.task != "retrieval":
        return
    if cfg.augment.mixup_alpha or cfg.augment.cutmix_alpha:
        raise ConfigError("augment.mixup_alpha / cutmix_alpha mix images but not their captions: a retrieval run "
                          "(model.task=retrieval) needs them at 0")
    check_queue_size(cfg.model.queue_size, len(ctx.split("train")), cfg.loader.batch_size * world)
