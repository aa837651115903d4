"""Every hardware-dependent choice of the engine, made in one place.

The engine runs on CPUs (CI, laptops), Pascal (sm_60/61), Volta/Turing
(sm_70/75) and Ampere/Hopper (sm_80/90).  Code elsewhere never reads
``torch.cuda.get_device_capability`` itself: it asks this module, so a test can
force any card with ``ENGINE_FORCE_CAPABILITY`` ("6.1", "7.0", "8.0", "9.0" or
"cpu") and check what the engine would do there; ``ENGINE_FORCE_ARCH_LIST``
("sm_75,sm_80" ...) stands in for ``torch.cuda.get_arch_list()``, the kernels the
installed torch was built with.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import torch

from engine import optional
from engine.errors import ConfigError, UserError

FORCE_ENV = "ENGINE_FORCE_CAPABILITY"
FORCE_ARCH_ENV = "ENGINE_FORCE_ARCH_LIST"


class UnsupportedDeviceError(UserError, RuntimeError):
    """The installed torch cannot run on this card; the message says which build to install."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the engine needs to know about the device it trains on."""

    kind: str  # "cpu" or "cuda"
    capability: Optional[tuple[int, int]]  # CUDA compute capability, None on CPU
    name: str  # human-readable, for logs and benchmark tables

    @property
    def family(self) -> str:
        """Pascal / Volta-Turing / Ampere-Hopper / cpu: the unit every policy below keys on."""
        if self.capability is None:
            return "cpu"
        major = self.capability[0]
        if major < 7:
            return "pascal"
        if major < 8:
            return "volta_turing"
        return "ampere_hopper"


def _parse_forced(value: str) -> DeviceInfo:
    if value.strip().lower() == "cpu":
        return DeviceInfo("cpu", None, "cpu (forced)")
    try:
        major, minor = (int(p) for p in value.split("."))
    except ValueError:
        raise ConfigError(f"{FORCE_ENV}={value!r}: expected 'MAJOR.MINOR' (e.g. 6.1, 8.0) or 'cpu'") from None
    return DeviceInfo("cuda", (major, minor), f"sm_{major}{minor} (forced)")


def default_device() -> torch.device:
    """The current CUDA device if there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def device_info(device: Optional[torch.device | str] = None) -> DeviceInfo:
    """Describe ``device`` (default: ``default_device()``)."""
    forced = os.environ.get(FORCE_ENV)
    if forced:
        return _parse_forced(forced)
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cuda":
        return DeviceInfo("cpu", None, "cpu")
    cap = torch.cuda.get_device_capability(device)
    return DeviceInfo("cuda", (cap[0], cap[1]), torch.cuda.get_device_name(device))


# --- does the installed torch have kernels for the card? ---------------------------------

# PyTorch's CUDA 12.6 wheels are its newest with Pascal and Volta kernels (sm_50 ... sm_90); the CUDA 12.8+ and 13
# builds start at sm_70 / sm_75. README.md, "Pascal and Volta", says how to install them.
OLD_CARD_TORCH_INDEX = "cu126"
OLD_CARD_INSTALL = f"make install TORCH_INDEX={OLD_CARD_TORCH_INDEX} (https://download.pytorch.org/whl/{OLD_CARD_TORCH_INDEX})"


def torch_arch_list(arch_list: Optional[list[str]] = None) -> list[str]:
    """The CUDA architectures the installed torch has code for: ``arch_list``, else ENGINE_FORCE_ARCH_LIST, else torch's."""
    if arch_list is not None:
        return list(arch_list)
    forced = os.environ.get(FORCE_ARCH_ENV)
    if forced is not None:
        return [a.strip() for a in forced.split(",") if a.strip()]
    return list(torch.cuda.get_arch_list())


def _parse_arch(arch: str) -> Optional[tuple[str, tuple[int, int], str]]:
    """'sm_86' -> ('sm', (8, 6), ''); 'compute_90' -> PTX; 'sm_90a' / 'sm_100f' -> arch- / family-specific."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch.strip())
    return (m.group(1), (int(m.group(2)), int(m.group(3))), m.group(4)) if m else None


def arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """CUDA's compatibility rules: an sm_XY binary runs on X.Z for Z >= Y (same major; 'a' variants on X.Y only);
    compute_XY PTX is JIT-compiled by the driver for any capability >= X.Y."""
    parsed = _parse_arch(arch)
    if parsed is None:
        return False
    kind, (major, minor), suffix = parsed
    if kind == "compute":
        return capability >= (major, minor)
    if suffix == "a":
        return capability == (major, minor)
    return capability[0] == major and capability[1] >= minor


def check_torch_kernels(info: DeviceInfo, arch_list: Optional[list[str]] = None) -> None:
    """Refuse to start on a card the installed torch has no kernels for (it would fail at the first CUDA op with
    'no kernel image is available'), naming the card and the build to install. Nothing to check on CPU."""
    if info.kind != "cuda":
        return
    archs = torch_arch_list(arch_list)
    if not archs or any(arch_runs_on(a, info.capability) for a in archs):
        return  # an empty list: torch built without CUDA, nothing to compare with
    major, minor = info.capability
    build = (OLD_CARD_INSTALL if info.capability < (7, 5) else "a torch build whose torch.cuda.get_arch_list() "
             f"has sm_{major}{minor} (or sm_{major}x with x <= {minor}, or PTX compute_XY <= {major}.{minor})")
    raise UnsupportedDeviceError(
        f"{info.name} (compute capability {major}.{minor}) cannot run torch {torch.__version__}: it has kernels for "
        f"{', '.join(archs)} only. Install {build}; see README.md, 'Pascal and Volta'"
    )


def check_local_card(arch_list: Optional[list[str]] = None) -> DeviceInfo:
    """First thing at training / evaluation start, on every rank: this process's card (the launcher's LOCAL_RANK-th)
    must have kernels in the installed torch (``check_torch_kernels``). Returns its DeviceInfo."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
    info = device_info(device)
    check_torch_kernels(info, arch_list)
    return info


# --- precision -----------------------------------------------------------------

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def choose_precision(info: DeviceInfo, requested: str = "auto") -> str:
    """Pick the training precision for ``info``; refuse a request the card cannot honour.

    bf16 on sm_80+ (native bf16 tensor cores), fp16 with dynamic loss scaling on
    sm_7x (tensor cores, no bf16), fp32 on Pascal (bf16 is emulated and fp16
    has no tensor cores, so both are slower or refused) and on CPU.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"train.precision={requested!r}: choose one of {PRECISIONS}")
    auto = {"cpu": "fp32", "pascal": "fp32", "volta_turing": "fp16", "ampere_hopper": "bf16"}[info.family]
    if requested == "auto":
        return auto
    if requested == "bf16" and info.family in ("pascal", "volta_turing"):
        raise ConfigError(
            f"train.precision=bf16 refused on {info.name}: bf16 needs compute capability >= 8.0 "
            f"(it is only emulated before); use 'auto' ({auto}) or 'fp16'/'fp32'"
        )
    if requested == "fp16" and info.family == "cpu" and not cpu_fp16_supported():
        raise ConfigError(
            "train.precision=fp16 refused on CPU without oneDNN fp16 kernels (AVX512-FP16 / AMX-FP16): DeepSpeed's fp16 "
            "engine refuses such a CPU itself (torch.ops.mkldnn._is_mkldnn_fp16_supported() is False here); use 'bf16' or 'fp32'")
    return requested


def cpu_fp16_supported() -> bool:
    """DeepSpeed's own test before its CPU accelerator takes fp16: oneDNN has fp16 kernels for this CPU (AVX512-FP16 /
    AMX-FP16, e.g. Sapphire Rapids on). Where it has them the fp16 engine, loss scaler included, trains on CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def torch_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


# --- kernels, optimizers, compilation -------------------------------------------------

AUGMENT_IMPLS = ("auto", "reference", "triton")


def triton_supported(info: DeviceInfo) -> bool:
    """Our fused Triton kernels target sm_80+ (Triton's own floor for bf16 and the tensor-core path)."""
    return info.family == "ampere_hopper"


def choose_augment_impl(info: DeviceInfo, requested: str = "auto") -> str:
    """Fused Triton kernels where Triton supports the card, the PyTorch reference elsewhere.

    ``TRITON_INTERPRET=1`` lets the Triton path run on CPU (tests); forcing
    "triton" on an unsupported CUDA card is refused rather than crashing late.
    """
    if requested not in AUGMENT_IMPLS:
        raise ConfigError(f"augment.impl={requested!r}: choose one of {AUGMENT_IMPLS}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if requested == "reference":
        return "reference"
    if requested == "triton":
        if info.kind == "cuda" and not triton_supported(info):
            raise ConfigError(f"augment.impl=triton refused on {info.name}: our kernels need sm_80+; use 'reference' or 'auto'")
        if info.kind == "cpu" and not interpret:
            raise ConfigError("augment.impl=triton on CPU needs TRITON_INTERPRET=1 (Triton's interpreter); "
                              "use 'reference' or 'auto'")
        return "triton"
    return "triton" if triton_supported(info) else "reference"


def fused_adam_available(info: DeviceInfo) -> bool:
    """torch's fused AdamW runs on any CUDA card; on CPU we use the plain loop."""
    return info.kind == "cuda"


def compile_supported(info: DeviceInfo) -> bool:
    """torch.compile's Inductor backend emits Triton, which needs sm_70+; CPU works with a C++ compiler."""
    return info.kind == "cpu" or info.capability >= (7, 0)


def channels_last_preferred(info: DeviceInfo) -> bool:
    """NHWC convolutions pay off with tensor cores (sm_70+); on Pascal and CPU NCHW is as fast or faster."""
    return info.family in ("volta_turing", "ampere_hopper")


def use_channels_last(info: DeviceInfo, requested: Optional[bool] = None) -> bool:
    """train.channels_last: an explicit true/false wins; null follows the card."""
    return channels_last_preferred(info) if requested is None else requested


def dali_decoder_defaults(info: DeviceInfo) -> dict:
    """DALI decode settings per card: A100/H100 (sm_80/90) have a hardware JPEG decoder."""
    if info.kind == "cpu":
        return {"device": "cpu", "hw_decoder_load": 0.0}
    has_hw = info.capability in ((8, 0), (9, 0))
    return {"device": "mixed", "hw_decoder_load": 0.75 if has_hw else 0.0}


CACHE_DECODERS = ("auto", "pil", "dali")


def choose_cache_decoder(info: DeviceInfo, requested: str = "auto") -> dict:
    """cache.decoder: what fills the flash decode cache. {"decoder": "pil"} or {"decoder": "dali", "device", "hw_decoder_load"}.

    auto: DALI on a CUDA card (nvJPEG; the hardware decoder on A100/H100/H200), Pillow on CPU: DALI's CPU decoder
    decodes every JPEG at full size, Pillow's DCT draft at 1/2-1/8 of it, so Pillow is the faster per core
    (docs/benchmarks.md: 45-62 against 27 img/s on the demo photos); and Pillow when DALI is not installed.
    dali on CPU runs DALI's CPU operators (tests).
    """
    if requested not in CACHE_DECODERS:
        raise ValueError(f"cache.decoder={requested!r}: choose one of {CACHE_DECODERS}")
    if requested == "pil" or (requested == "auto" and (info.kind == "cpu" or not optional.has_dali())):
        return {"decoder": "pil"}
    return {"decoder": "dali", **dali_decoder_defaults(info)}
