"""What ``cache.dir`` holds: each cache's size, what it was built from, whether it is stale; pruning stale ones.

``record_origin`` (tools/build_cache.py, after each build or confirmation) writes ``origin.json`` into the
finished cache: the data settings, run seed and working directory it was built under. The folder name is the
key's digest, which covers the manifest's bytes and the image paths, so that record holds whichever recipe
builds the folder. With it a cache is checked on its own, without the recipe that built it:

  stale     its manifest is gone or no longer the file it was built from (``manifest_version``), or its image
            files changed since (``images_fingerprint``, one stat per record). A cache without an origin record
            (built before them, or by ``build_cache`` called from Python) is judged with the recipe the user
            names if it was built from that recipe's manifest file, else shows its manifest's sha256 only and is
            never judged stale;
  partial   an unfinished build (``<name>.partial``): stale once nothing in it was written for ``older_than_s``
            and no build holds the lock on ``cache.dir`` nor a shard of it (``shards.running_shards``).

Sizes are disk blocks (a partial build's sparse ``images.u8`` counts what was written); a pixel file that
caches share through hard links (``pixels_from``) is counted once in the total.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional
import numpy as np

from engine.data.cache import format as fmt
from engine.data.cache.selection import paths_sha

ORIGIN = "origin.json"  # inside a finished cache: what it was built from (record_origin)


def record_origin(cfg, folder: Path) -> None:
    """Write what the finished cache ``folder`` was built from (see the module doc), atomically, if it differs."""
    if not (folder / fmt.METADATA).is_file():
        return
    origin = origin_of(cfg)
    path = folder / ORIGIN
    if _read_json(path) == origin:
        return
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(origin, indent=1, sort_keys=True))
    os.replace(tmp, path)


def origin_of(cfg) -> dict:
    """The origin record of a cache built under run config ``cfg`` from this working directory."""
    return {"manifest": os.path.abspath(cfg.data.manifest), "data": asdict(cfg.data), "seed": cfg.run.seed,
            "cwd": os.getcwd()}


@dataclass
class CacheEntry:
    folder: Path
    partial: bool  # an unfinished build
    disk_bytes: int  # blocks its files take (shared pixel files included)
    age_s: float  # since anything in it was last written
    meta: dict = field(default_factory=dict)  # metadata.json ({} for a partial build)
    origin: dict = field(default_factory=dict)  # its origin record ({} when none was recorded)
    stale: str = ""  # why it is stale ('' when it is not)
    shares_with: list[str] = field(default_factory=list)  # caches hard-linked to its pixel file
    origin_from_recipe: bool = False  # no record of its own: judged with the named recipe's (same manifest file)
    checked: bool = False  # its manifest and image files could be checked (``stale`` is the verdict)

    def built_from(self) -> str:
        key = self.meta.get("key") or _partial_key(self.folder)
        manifest = self.origin.get("manifest") or f"manifest sha256 {str(key.get('manifest_version', '?'))[:12]}"
        bits = [manifest, f"{key.get('stored_size', '?')} px {key.get('resize_policy', '?')}",
                key.get("storage", "raw")]
        if key.get("tokenizer"):
            bits.append(f"{key['tokenizer']} L={key.get('max_length')}")
        return ", ".join(str(b) for b in bits)


def inspect_caches(root: Path, older_than_s: float, recipe: Optional[dict] = None) -> list[CacheEntry]:
    """Every cache and partial build under ``root``, oldest first, with its staleness. ``recipe``: the origin of
    the recipe the user named (``origin_of``), taken for a cache without a record of its own when that cache was
    built from the recipe's manifest file (the same sha256) and names the same image files (``images_sha``)."""
    from engine.data.cache.lock import holder

    root = Path(root)
    if not root.is_dir():
        return []
    building = holder(root)  # a build holds the lock on cache.dir: its partial is not abandoned
    entries, inodes = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        partial = folder.name.endswith(fmt.PARTIAL_SUFFIX)
        if not partial and not (folder / fmt.METADATA).is_file():
            continue  # not a cache (or one whose folder was never sealed)
        try:
            disk, newest, pixels = _scan(folder)
        except FileNotFoundError:  # sealed (renamed) or removed while we looked
            continue
        if not partial:
            for inode in pixels:
                inodes.setdefault(inode, []).append(folder.name)
        entry = CacheEntry(folder, partial, disk, max(0.0, time.time() - newest), origin=_read_json(folder / ORIGIN))
        if partial:
            from engine.data.cache.shards import running_shards

            # a shard decodes under its own claim, not the lock on cache.dir
            if entry.age_s > older_than_s and not building and not running_shards(folder):
                entry.stale = f"unfinished build, untouched for {entry.age_s / 3600:.1f} h"
        else:
            entry.meta = _read_json(folder / fmt.METADATA)
            if not entry.origin and recipe and _same_manifest(recipe, entry.meta):
                entry.origin, entry.origin_from_recipe = recipe, True
            verdict = finished_stale(folder, entry.meta, entry.origin)
            entry.checked, entry.stale = verdict is not None, verdict or ""
            if not entry.checked and entry.origin_from_recipe:  # the recipe names other files: not its origin
                entry.origin, entry.origin_from_recipe = {}, False
        entries.append(entry)
    for entry in entries:
        entry.shares_with = sorted({n for names in inodes.values() if entry.folder.name in names for n in names}
                                   - {entry.folder.name})
    return sorted(entries, key=lambda e: -e.age_s)


def _scan(folder: Path) -> tuple[int, float, list]:
    """(disk bytes, newest modification time, the (device, inode) of its pixel files) of a cache folder."""
    disk, newest, pixels = 0, folder.stat().st_mtime, []
    for f in folder.rglob("*"):
        st = f.lstat()
        newest = max(newest, st.st_mtime)
        if f.is_file():
            disk += st.st_blocks * 512
            if f.name in (fmt.IMAGES, getattr(fmt, "ENCODED", fmt.IMAGES)):
                pixels.append((st.st_dev, st.st_ino))
    return disk, newest, pixels


def finished_stale(folder: Path, meta: dict, origin: dict) -> Optional[str]:
    """Why a finished cache no longer matches what it was built from: '' if it does, None if that is unknown."""
    if not origin:
        return None
    manifest = Path(origin["manifest"])
    if not manifest.is_file():
        return f"its manifest {manifest} is gone"
    if not _same_manifest(origin, meta):
        return f"{manifest} changed since it was built"
    from engine.data.config import DataConfig
    from engine.data.manifest import load_manifest

    try:
        with contextlib.chdir(origin["cwd"]):  # its image paths as the build named them (data.root may be relative)
            cfg = DataConfig(**origin["data"])
            m = load_manifest(cfg, check_files=False, required_splits=(), seed=origin["seed"])
            paths = [str(m.image_path(int(r), cfg.image_column)) for r in np.load(folder / "rows.npy")]
            if paths_sha(paths) != meta["key"].get("images_sha"):  # another data.root or image column: not judged
                return None
            return fmt.changed_images(meta, paths, folder)
    except (OSError, TypeError, ValueError, KeyError):  # an origin this version cannot read, a damaged cache
        return None


def _same_manifest(origin: dict, meta: dict) -> bool:
    """Whether the origin's manifest file is still the one the cache was built from (its sha256)."""
    try:
        st = os.stat(origin["manifest"])
    except OSError:
        return False
    return _sha256(origin["manifest"], st.st_size, st.st_mtime_ns) == meta.get("key", {}).get("manifest_version")


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per (path, size, modification time): many caches share one manifest."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prune(root: Path, entries: list[CacheEntry]) -> int:
    """Remove these caches under the build lock; the bytes they took (shared pixel files included)."""
    from engine.data.cache.lock import build_lock

    freed = 0
    with build_lock(Path(root) / "_"):  # no build starts while folders go
        for e in entries:
            freed += e.disk_bytes
            shutil.rmtree(e.folder, ignore_errors=True)
    return freed


def total_bytes(entries: list[CacheEntry]) -> int:
    """Disk use of ``entries`` with each shared pixel file counted once."""
    seen, total = set(), 0
    for e in entries:
        try:
            for f in e.folder.rglob("*"):
                st = f.lstat()
                if f.is_file() and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
        except FileNotFoundError:  # gone while we counted
            continue
    return total


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _partial_key(folder: Path) -> dict:
    return _read_json(folder / fmt.KEY_FILE).get("key", {})


__all__ = ["CacheEntry", "inspect_caches", "finished_stale", "prune", "record_origin", "total_bytes"]
