"""The run configuration: one dataclass per component, filled from YAML and overrides.

Each component owns its config dataclass next to its code
(``engine/data/config.py``, ``engine/models/config.py``,
``engine/training/config.py``, ``kernels/config.py``); this module only
assembles them and implements the strict filling rules:

* YAML fills the sections, ``--section.key=value`` overrides them (the value is
  read as YAML, so ``--train.epochs=3`` is an int and ``--data.numeric_columns=[a,b]`` a list);
* unknown keys and wrong types fail naming the key and the file;
* ``Literal[...]`` fields only take the listed values.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml

from engine.data.config import CacheConfig, DataConfig, LoaderConfig
from engine.errors import ConfigError  # noqa: F401  (defined with the rest of the user-error family; imported from here)
from engine.models.config import ModelConfig
from engine.training.config import DeepSpeedConfig, EvalConfig, OptimConfig, TrainConfig
from kernels.config import AugmentConfig


@dataclass
class RunConfig:
    output_dir: str = "runs"  # parent folder of every run folder
    name: str = "run"  # run folder name under output_dir
    seed: int = 0  # seeds Python, numpy, torch, the data order and augmentation
    deterministic: bool = False  # torch deterministic algorithms (bitwise resume on CPU)
    # a start without --resume where output_dir/name already holds a run: refuse, or rename it to <name>.prev-<time>
    existing: Literal["refuse", "keep_aside"] = "refuse"
    # output_dir is one folder every node sees (global rank 0 writes it); false: a folder on each node's own disk,
    # each written by its node's local rank 0 (docs/distributed.md). Checked when the run starts.
    shared_fs: bool = True

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("run.output_dir must not be empty")
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"run.name must be a folder name (no '/'), got {self.name!r}")
        if self.seed < 0:
            raise ValueError(f"run.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class ConfigOrigin:
    """Where a loaded config came from: what a command that must rebuild something for it repeats
    (``format.build_command``). Not a setting: absent from ``to_dict`` and the saved config."""

    recipe: Optional[str] = None  # the YAML file given to load_config (a run's config.yaml for --run RUN)
    overrides: tuple[tuple[str, Any], ...] = ()  # (dotted key, value as given), in command-line order


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    origin: ClassVar[ConfigOrigin] = ConfigOrigin()  # set per instance by load_config

    def __post_init__(self):
        for stage in self.train.stages:  # a typo in a stage's overrides fails at load, not when the stage starts
            apply_stage_overrides(self, stage.overrides, f"train.stages[{stage.name}].overrides")
        check_across_sections(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_across_sections(cfg: Config) -> None:
    """Rules that tie two sections together (each section checks its own fields on construction)."""
    from engine.training.metrics import expected_eval_metrics

    metrics = expected_eval_metrics(cfg)
    if cfg.eval.metric not in metrics:
        raise ValueError(f"eval.metric={cfg.eval.metric!r} is not a metric this run logs; choose one of {metrics}")


# --- type checking and coercion ---------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):  # e.g. the items of train.stages
        return _fill(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _fill(cls: type, values: dict, prefix: str) -> Any:
    """Build dataclass ``cls`` from ``values``; reject unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise unknown_key(full, fields, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _fill(tp, value, full)
        else:
            kwargs[key] = _coerce(value, tp, full)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        msg = str(e)
        raise ConfigError(msg if msg.startswith(prefix) or not prefix else f"{prefix}: {msg}") from None


def unknown_key(full: str, known, prefix: str) -> ConfigError:
    """The error for key ``full`` missing from ``known`` (one section's keys): the closest key first, then the list."""
    import difflib

    key = full.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
    return ConfigError(f"unknown key '{full}'{hint} (known keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(known))}; "
                       "engine/train.py --print-config lists every key)")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override --{dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def override_items(args: list[str]) -> list[tuple[str, str]]:
    """The one parser of ``--section.key=value`` / ``--section.key value`` arguments: ``["--train.epochs=3",
    "--data.root", "x"]`` -> ``[("train.epochs", "3"), ("data.root", "x")]`` (values as typed)."""
    items = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
        elif i + 1 < len(args):
            key, raw = body, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override --{body} has no value")
        if "." not in key:
            raise ConfigError(f"override --{key}: expected --section.key=value")
        items.append((key, raw))
        i += 1
    return items


def parse_overrides(args: list[str]) -> dict:
    """Turn ``["--train.epochs=3", "--data.root", "x"]`` into a nested dict (values read as YAML)."""
    tree: dict = {}
    for key, raw in override_items(args):
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)
    return tree


def _dotted(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested override dict as (dotted key, value) pairs."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += _dotted(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, mappings merged key by key (``--deepspeed.extra.x=1`` keeps the other extra keys)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_recipe(path: Path) -> dict:
    """One recipe file as a mapping; bad YAML, a non-mapping or an unknown key fails naming this file."""
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        _check_keys(Config, {k: v for k, v in tree.items() if k not in ("inherit", "provenance")}, "")
    except ConfigError as e:
        raise ConfigError(f"{e} [in {path}]") from None
    return tree


def _check_keys(cls: type, values: Any, prefix: str) -> None:
    """Unknown keys of one file, before merging (values are checked on the merged tree)."""
    if not isinstance(values, dict):
        return
    hints, names = typing.get_type_hints(cls), {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise unknown_key(full, names, prefix)
        if dataclasses.is_dataclass(hints[key]):
            _check_keys(hints[key], value, full)


def _inherit(tree: dict, path: Path, seen: tuple) -> dict:
    """``inherit: other.yaml`` (relative to this file) loads that recipe first; this file's keys win."""
    base = tree.pop("inherit", None)
    if base is None:
        return tree
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: 'inherit' forms a cycle through {base_path}")
    if not base_path.is_file():
        raise ConfigError(f"{path}: inherit: {base} does not exist (looked for {base_path})")
    return _merge(_inherit(_read_recipe(base_path), base_path, seen + (base_path,)), tree)


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str] | dict] = None) -> Config:
    """Read ``path`` (YAML), apply ``overrides``, validate; errors name the key and the file.

    A run's resolved ``config.yaml`` loads too: its ``provenance`` section is a record, not settings.
    """
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        tree = _read_recipe(path)
        if "inherit" in tree:
            source += f" (inherits {tree['inherit']})"
        tree = _inherit(tree, path, seen=(path.resolve(),))
        tree.pop("provenance", None)
    items: list[tuple[str, Any]] = []
    if overrides:
        items = override_items(overrides) if isinstance(overrides, list) else _dotted(overrides)
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        tree = _merge(tree, over)
        source += " + command-line overrides"
    try:
        cfg = _fill(Config, tree, "")
    except ConfigError as e:
        raise ConfigError(f"{e} [in {source}]") from None
    cfg.origin = ConfigOrigin(None if path is None else str(path), tuple(items))
    return cfg


# What a stage may change (train.stages[i].overrides): loss settings, never the architecture or the data.
STAGE_OVERRIDABLE: dict[str, tuple[str, ...]] = {
    "model": ("modality_dropout", "aux_loss_weight", "contrastive_weight", "contrastive_loss", "hard_negatives",
              "hard_negative_beta", "hard_negative_tau_plus", "semihard_margin"),
    "train": ("loss", "label_smoothing", "focal_gamma", "class_weights", "grad_clip"),
}


def apply_stage_overrides(cfg: Config, overrides: dict, where: str) -> Config:
    """A copy of ``cfg`` with dotted ``overrides`` ({"model.hard_negatives": "weighted"}) applied and validated."""
    by_section: dict[str, dict] = {}
    for dotted, value in overrides.items():
        section, _, key = str(dotted).partition(".")
        allowed = STAGE_OVERRIDABLE.get(section, ())
        if key not in allowed:
            raise ConfigError(f"{where}: {dotted!r} cannot change per stage; a stage may set "
                              f"{[f'{s}.{k}' for s, keys in STAGE_OVERRIDABLE.items() for k in keys]}")
        by_section.setdefault(section, {})[key] = value
    changed = {}
    for section, values in by_section.items():
        current = getattr(cfg, section)
        known = {f.name for f in dataclasses.fields(current)}
        missing = set(values) - known
        if missing:  # listed as overridable but not a field of this build (an optional feature)
            raise ConfigError(f"{where}: {section}.{sorted(missing)[0]} is not a key of this engine's {section} section")
        changed[section] = _fill(type(current), {**dataclasses.asdict(current), **values}, f"{where}: {section}")
    out = copy.copy(cfg)  # not dataclasses.replace: that would validate the stages again, recursively
    for section, value in changed.items():
        setattr(out, section, value)
    return out


def config_from_dict(tree: dict) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (run folders, checkpoints)."""
    tree = {k: v for k, v in tree.items() if k != "provenance"}
    return _fill(Config, tree, "")


def save_config(cfg: Config, path: Path, provenance: Optional[dict] = None) -> None:
    """Write the resolved config (plus how it came to be) as YAML."""
    tree = cfg.to_dict()
    if provenance:
        tree["provenance"] = provenance
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(tree), sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
