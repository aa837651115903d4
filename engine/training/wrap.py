"""The one place a plain ``nn.Module`` becomes a DeepSpeed engine, in a documented order.

1. precision is chosen for the card (engine.hardware, by the caller),
2. the model moves to the device (channels_last for conv backbones where the
   card prefers it); under bf16/fp16 every BatchNorm computes with fp32 weight
   and statistics (``batchnorm_in_fp32``),
3. the stage's trainable set is fixed (frozen encoders or everything),
4. optimizer and schedule are built from the trainable parameters,
5. DeepSpeed wraps all three with a config generated from ours plus the
   user's validated pass-through keys,
6. optionally ``torch.compile`` where the card supports it.

Called again with the same module at a stage boundary: the weights carry over,
optimizer and schedule start afresh for the new stage.
"""
from __future__ import annotations

import difflib
import importlib
import re
import warnings
from functools import lru_cache

import torch
from torch import nn

from engine import hardware
from engine.config import Config, ConfigError
from engine.training.optim import create_optimizer, create_scheduler
from engine.training.stages import set_frozen

# Top-level sections DeepSpeed reads through their own sub-config objects rather than
# through a constant in deepspeed.runtime.constants.
_DS_SECTIONS = {
    "zero_optimization", "tensorboard", "wandb", "csv_monitor", "comet", "activation_checkpointing", "elasticity",
    "amp", "compression_training", "pipeline", "hybrid_engine", "compile", "weight_quantization", "timers",
    "sparse_gradients", "flops_profiler", "aio", "autotuning", "data_efficiency", "nebula", "comms_logger",
    "checkpoint", "data_types", "torch_autocast", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
}


@lru_cache(maxsize=1)
def known_deepspeed_keys() -> frozenset[str]:
    """Config keys DeepSpeed knows: every key-like constant it declares, plus its sections."""
    keys = set(_DS_SECTIONS)
    for mod in ("deepspeed.runtime.constants", "deepspeed.profiling.constants", "deepspeed.autotuning.constants",
                "deepspeed.runtime.data_pipeline.constants", "deepspeed.runtime.swap_tensor.constants"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        keys.update(v for k, v in vars(m).items() if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z][a-z0-9_]*", v))
    return frozenset(keys)


def validate_extra(extra: dict) -> None:
    """DeepSpeed silently ignores unknown keys; a typo here must fail, naming the key."""
    known = known_deepspeed_keys()
    for key in extra:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"deepspeed.extra.{key}: not a DeepSpeed config key{hint}")


def deepspeed_config(cfg: Config, precision: str, world: int) -> dict:
    """Our settings as a DeepSpeed JSON config; ``deepspeed.extra`` keys are merged on top."""
    validate_extra(cfg.deepspeed.extra)
    micro, accum = cfg.loader.batch_size, cfg.train.grad_accum
    ds = {
        "train_batch_size": micro * accum * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # fp16: dynamic loss scaling (loss_scale 0); overflowing steps are skipped by DeepSpeed
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.zero_stage and precision == "fp32":
        ds["zero_allow_untested_optimizer"] = True  # torch AdamW/SGD under ZeRO without mixed precision
    for key, value in cfg.deepspeed.extra.items():
        if isinstance(value, dict) and isinstance(ds.get(key), dict):
            ds[key] = {**ds[key], **value}
        else:
            ds[key] = value
    if ds["train_batch_size"] != ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world:
        raise ConfigError(
            f"deepspeed.extra: train_batch_size={ds['train_batch_size']} != micro batch {ds['train_micro_batch_size_per_gpu']}"
            f" x accumulation {ds['gradient_accumulation_steps']} x world size {world}"
        )
    return ds


def batchnorm_in_fp32(model: nn.Module) -> int:
    """Let every BatchNorm of ``model`` run on half-precision activations with fp32 weight and statistics.

    DeepSpeed's bf16/fp16 engines cast parameters, not buffers (0.19: fp32 buffers such as rotary tables must stay
    fp32), so a BatchNorm ends up with bf16 weight and bias beside fp32 running statistics, a mix ``batch_norm``
    refuses on CPU and CUDA alike ("expected scalar type BFloat16 but found Float"). Casting the statistics to bf16
    instead would accumulate them with 8 mantissa bits. So weight and bias enter the op as a differentiable fp32
    copy of the half-precision parameters (DeepSpeed keeps the fp32 master weights in the optimizer anyway) while
    the activations stay in the training dtype: half input with fp32 weight and statistics is PyTorch's 'mixed'
    batch_norm (cuDNN's own layout for it on a GPU), which returns the input dtype and updates the statistics in
    fp32. Covers nn.BatchNorm* and subclasses (timm's BatchNormAct2d). Idempotent (a stage switch re-wraps);
    returns how many modules it hooked.
    """
    hooked = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "_fp32_weights_hooked", False):
            m.register_forward_pre_hook(_fp32_weights)
            m.register_forward_hook(_restore_weights, always_call=True)  # also when forward raises
            m._fp32_weights_hooked = True
            hooked += 1
    return hooked


def _fp32_weights(module: nn.Module, args) -> None:
    params = {k: p for k in ("weight", "bias") if (p := module._parameters.get(k)) is not None
              and p.dtype in (torch.bfloat16, torch.float16)}
    if params:  # bypasses Module.__setattr__, which only takes Parameters; forward reads module.weight from here
        module.__dict__["_half_params"] = params
        module._parameters.update({k: p.float() for k, p in params.items()})


def _restore_weights(module: nn.Module, args, output) -> None:
    params = module.__dict__.pop("_half_params", None)
    if params:
        module._parameters.update(params)


def wrap_model(model: nn.Module, cfg: Config, device: torch.device, precision: str, world: int, total_steps: int,
               base_lr: float, frozen: bool = False):
    """Return (engine, optimizer, scheduler) ready to train; see the module docstring for the order."""
    import deepspeed

    info = hardware.device_info(device)
    channels_last = hardware.use_channels_last(info, cfg.train.channels_last)
    model = model.to(device)
    if channels_last and getattr(model, "image", None) is not None:
        model.image.to(memory_format=torch.channels_last)
    if precision in ("bf16", "fp16"):
        batchnorm_in_fp32(model)
    set_frozen(model, frozen)
    optimizer = create_optimizer(model, cfg.optim, base_lr, device)
    scheduler = create_scheduler(optimizer, cfg.optim, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, precision, world)
    )
    if cfg.train.compile:
        if hardware.compile_supported(info):
            engine.compile()
        else:
            warnings.warn(f"train.compile ignored on {info.name}: torch.compile needs sm_70+ (Triton)")
    return engine, optimizer, scheduler


def release(engine) -> None:
    """Free an engine before re-wrapping its module (stage switch)."""
    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()
