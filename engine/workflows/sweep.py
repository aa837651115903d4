"""Sweeps: one base recipe, named variants of dotted overrides, optional grids; normal runs one after another.

    variants.yaml:  image_only: {model.text_encoder: null, model.use_tabular: false}
                    fused: {}
    --grid optim.lr=0.001,0.0003  ->  image_only__optim.lr=0.001, image_only__optim.lr=0.0003, fused__...

Every variant is planned and its config loaded before anything runs, so an unknown key or a bad value fails
naming the variant and the key. Each variant then is: its cache (``tools/build_cache.py`` with its overrides;
pixels are reused by pixel key and an up-to-date cache is a no-op; variants whose cache settings are equal share
one call; variants that differ only in their row selection -- ``data.max_*_samples``, ``data.folds``/``fold`` --
share one build without it, which serves each variant's rows), then its run (``engine/train.py`` under the
user's launcher, in ``OUT/runs/<variant>``). A variant whose run folder holds summary.json is done and
skipped; one with a ``last`` checkpoint resumes (``--resume``).
"""
from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SEED_KEY = "run.seed"  # grid points of this key are repeats of one variant: the tables give mean +- std over them


@dataclass
class SweepConfig:
    base: str  # the base recipe every variant starts from
    out: str  # the sweep folder: runs/, logs/, results.{csv,md,png}, sweep_log.jsonl
    variants: Optional[str] = None  # YAML: variant name -> {dotted key: value} ("_name" = template); none = "base" alone
    grid: list[str] = field(default_factory=list)  # "key=v1,v2": every variant at every grid point
    launcher: str = ""  # e.g. "deepspeed --num_gpus 2 --master_port 29600"; "" = this Python, one process
    overrides: list[str] = field(default_factory=list)  # --section.key=value applied to every variant first
    only: list[str] = field(default_factory=list)  # run just these variants (names); the tables cover every one
    dry_run: bool = False  # plan and check every variant's config, run nothing
    max_runs: Optional[int] = None  # stop after running this many variants (skipped ones do not count)

    def __post_init__(self):
        if self.max_runs is not None and self.max_runs < 0:
            raise ConfigError(f"--max-runs must be >= 0, got {self.max_runs}")

    @property
    def runs_dir(self) -> Path:
        return Path(self.out) / "runs"


@dataclass
class Variant:
    name: str  # run folder name: the variant, then "__key=value" per grid point
    overrides: list[str]  # --key=value, in order: the variant's, then the grid point's
    group: str  # the name without its run.seed part: rows of one group are averaged in the tables


def read_variants(path: Optional[str]) -> dict[str, dict[str, Any]]:
    """Variant name -> flat {dotted key: value}; nested mappings (``model: {use_tabular: false}``) are flattened."""
    if path is None:
        return {"base": {}}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--variants {path} does not exist")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{path}: expected a mapping of variant name -> {{dotted.key: value}}")
    out = {}
    for name, overrides in tree.items():
        name = str(name)
        if name.startswith("_"):  # a template for YAML anchors (_adamw: &adamw {...}), not a variant
            continue
        if not name or "/" in name or name in (".", "..") or "__" in name:
            raise ConfigError(f"{path}: variant name {name!r} must be a folder name without '/' or '__'")
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"{path}: variant {name!r}: expected a mapping of dotted keys, got {overrides!r}")
        out[name] = _flatten(overrides or {})
    return out


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and "." not in key:  # a section written as a mapping
            flat.update(_flatten(v, key))
        else:
            flat[key] = v
    return flat


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["optim.lr=0.001,0.0003"]`` -> [("optim.lr", ["0.001", "0.0003"])]; commas inside [...] stay (list values)."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or "." not in key or not values:
            raise ConfigError(f"--grid {item!r}: expected section.key=v1,v2,...")
        parts, depth, cur = [], 0, ""
        for ch in values:
            depth += ch in "[{"
            depth -= ch in "]}"
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        if any(not v.strip() for v in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"--grid {item!r}: empty or repeated value")
        grid.append((key, [v.strip() for v in parts]))
    if len({k for k, _ in grid}) != len(grid):
        raise ConfigError(f"--grid: a key appears twice in {items}")
    return grid


def plan(variants: dict[str, dict[str, Any]], grid: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every variant at every grid point, variants in file order, grid points in command-line order."""
    out = []
    keys = [k for k, _ in grid]
    for name, overrides in variants.items():
        base = [f"--{k}={json.dumps(v)}" for k, v in overrides.items()]  # JSON is YAML: null, lists, strings
        for point in itertools.product(*(vals for _, vals in grid)) if grid else [()]:
            tail = "".join(f"__{k}={v}" for k, v in zip(keys, point))
            group = name + "".join(f"__{k}={v}" for k, v in zip(keys, point) if k != SEED_KEY)
            out.append(Variant(name + tail, base + [f"--{k}={v}" for k, v in zip(keys, point)], group))
    return out


def run_overrides(sweep: SweepConfig, v: Variant) -> list[str]:
    """All overrides of one variant's run: the sweep's common ones, the variant's, then its folder."""
    return [*sweep.overrides, *v.overrides, f"--run.output_dir={sweep.runs_dir}", f"--run.name={v.name}"]


def load_all(sweep: SweepConfig, variants: list[Variant]) -> dict[str, Any]:
    """Each variant's Config; the first that does not load fails naming the variant (nothing has run yet)."""
    from engine.config import load_config

    configs = {}
    for v in variants:
        try:
            configs[v.name] = load_config(sweep.base, run_overrides(sweep, v))
        except ConfigError as e:
            raise ConfigError(f"variant {v.name!r}: {e}") from None
    return configs


# The settings that only select rows: a cache built without them holds every selection's rows and serves it
# (engine/data/cache/selection.py), so variants that differ only in these share one build of it.
NO_SELECTION = {"max_train_samples": None, "max_val_samples": None, "max_test_samples": None, "folds": 0, "fold": 0}
UNSELECTED = [f"--data.{k}={json.dumps(v)}" for k, v in NO_SELECTION.items()]  # the overrides of that build


def cache_signature(cfg, selection: bool = True) -> Optional[str]:
    """What decides a variant's caches (the settings cache_key reads), without the row selection unless
    ``selection``; None when it trains without a cache."""
    if cfg.loader.backend not in ("cache", "dali_cache"):
        return None
    from dataclasses import asdict

    data = asdict(cfg.data)
    if not selection:
        data.update(NO_SELECTION)
    return json.dumps({"data": data, "cache": asdict(cfg.cache), "text": cfg.model.text_encoder,
                       "max_length": cfg.model.text_max_length, "seed": cfg.run.seed}, sort_keys=True, default=str)


def selection_groups(configs: dict[str, Any]) -> set[str]:
    """The selection-free signatures that several variants' different selections share (one build serves them)."""
    groups: dict[str, set] = {}
    for cfg in configs.values():
        group = cache_signature(cfg, selection=False)
        if group is not None:
            groups.setdefault(group, set()).add(cache_signature(cfg))
    return {g for g, sigs in groups.items() if len(sigs) > 1}


def _with_free_port(launcher: list[str]) -> list[str]:
    """The DeepSpeed launcher listens on 29500 unless told otherwise, which another job on the machine often holds:
    give it a free port unless the user named one."""
    if Path(launcher[0]).name != "deepspeed" or any(a.startswith("--master_port") for a in launcher):
        return launcher
    from engine.training.distributed import _free_port

    return [*launcher, "--master_port", str(_free_port())]


def run_state(folder: Path) -> str:
    """'done' (summary.json), 'resume' (a 'last' checkpoint), 'restart' (a folder without either), 'new'."""
    if (folder / "summary.json").is_file():
        return "done"
    if (folder / "checkpoints" / "last" / "train_state.json").is_file():
        return "resume"
    return "restart" if folder.exists() else "new"


def _call(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output appended to ``log``; seconds taken. A failure names the log and its tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode  # in the user's folder: their paths
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SweepRunFailed(f"{cmd[0]} ... exited with {rc}; full output in {log}:\n{tail}")
    return time.perf_counter() - t0


class SweepRunFailed(RuntimeError):
    """A variant's cache build or run failed (its own output says why); finished variants stay done."""


def run_sweep(sweep: SweepConfig, variants: Optional[list[Variant]] = None) -> list[dict]:
    """Plan (or take ``variants``: tools/oof.py's folds), check every variant, run those not done; returns one
    timing record per variant."""
    t0 = time.perf_counter()
    variants = planned_variants(sweep) if variants is None else variants
    unknown = sorted(set(sweep.only) - {v.name for v in variants})
    if unknown:
        raise ConfigError(f"--only {unknown}: not variants of this sweep (they are {[v.name for v in variants]})")
    configs = load_all(sweep, variants)
    print(f"sweep: {len(variants)} variants checked in {time.perf_counter() - t0:.2f} s -> {sweep.out}", flush=True)
    if sweep.dry_run:
        for v in variants:
            print(f"  {v.name}: {run_state(sweep.runs_dir / v.name)}  {shlex.join(v.overrides)}")
        return []
    out, launcher = Path(sweep.out), shlex.split(sweep.launcher) or [sys.executable]
    built: dict[str, str] = {}  # cache signature (or selection group) -> the variant whose build call covered it
    shared = selection_groups(configs)
    records, ran = [], 0
    for v in variants:
        folder = sweep.runs_dir / v.name
        state = run_state(folder)
        if state == "done" or (sweep.only and v.name not in sweep.only):
            records.append({"variant": v.name, "status": "done" if state == "done" else "not selected"})
            continue
        if sweep.max_runs is not None and ran >= sweep.max_runs:
            print(f"sweep: stopping before {v.name} (--max-runs {sweep.max_runs}); run again to continue", flush=True)
            break
        t_variant = time.perf_counter()
        overrides = run_overrides(sweep, v)
        cache_s, cache_note = 0.0, "none (no cache backend)"
        sig, group = cache_signature(configs[v.name]), cache_signature(configs[v.name], selection=False)
        unselected = group in shared  # built once without the selection; every variant's rows are served from it
        if sig is not None and (group if unselected else sig) in built:
            cache_note = (f"{'served from the caches built by' if unselected else 'shared with'} "
                          f"{built[group if unselected else sig]}")
        elif sig is not None:
            cache_s = _call([sys.executable, str(ROOT / "tools/build_cache.py"), "--config", sweep.base, *overrides,
                             *(UNSELECTED if unselected else []), "--no-progress"], out / "logs" / f"{v.name}.cache.log")
            built[group if unselected else sig] = v.name
            cache_note = "built or up to date" + (" (without the row selection: it serves every variant's)" if unselected else "")
        extra = {"resume": ["--resume"], "restart": ["--run.existing=keep_aside"]}.get(state, [])
        train_s = _call([*_with_free_port(launcher), str(ROOT / "engine/train.py"), "--config", sweep.base, *overrides, *extra],
                        out / "logs" / f"{v.name}.train.log")
        total = time.perf_counter() - t_variant
        record = {"variant": v.name, "status": "resumed" if state == "resume" else "ran", "cache": cache_note,
                  "cache_s": cache_s, "train_s": train_s, "total_s": total, "overhead_s": total - cache_s - train_s,
                  "run_wall_time_s": _summary(folder).get("wall_time_s")}
        _append(out / "sweep_log.jsonl", record)
        print(f"sweep: {v.name}: {record['status']}; cache {cache_s:.1f} s ({cache_note}), run {train_s:.1f} s, "
              f"sweep overhead {record['overhead_s'] * 1000:.0f} ms", flush=True)
        records.append(record)
        ran += 1
    return records


def planned_variants(sweep: SweepConfig) -> list[Variant]:
    return plan(read_variants(sweep.variants), parse_grid(sweep.grid))


def _summary(folder: Path) -> dict:
    p = folder / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
