"""Serving a selection of a cache's rows: a seeded subset, a fold, or rows that another split's cache holds.

A finished cache holds one record per row its key selected (``rows.npy``: the manifest row of each record).
A run whose cache key differs from a finished cache's only in *which rows* it selects -- ``data.max_*_samples``,
``data.folds``/``data.fold``, the split those rows are called (a fold's val rows are train rows) -- and in what
is fitted on them (the tabular statistics), is served from that cache, the *cover*, by a row-index mapping:
position p of the split shows the cover's record ``records[p]``. Nothing is built, decoded, linked or copied.

What must hold, checked when the cache is opened (``open_selection``) or built (``build_from_cover``):
  - the same manifest file (``manifest_version``) and the same settings: every other key component (columns,
    tokenizer and length, classes, stored size, resize policy, draft, storage, format version);
  - every selected row has a record in the cover, whose rows name the same files under this run's
    ``data.root`` (the cover's ``images_sha``), unchanged since it was built (its ``images_fingerprint``: one
    stat per record of the cover). A changed file makes the cover stale: opening refuses with the build
    command, and that build decodes the selection's own cache, as for any stale cache.
The fields (labels, tokens, tabular, captions) are this run's own ``SplitData`` arrays -- a fold's tabular
statistics are fitted on its own train rows -- so only the pixels come from the cover; the cover's labels
are checked against them as a guard on the mapping. A cache whose key equals the run's is preferred.

This module finds and checks covers (it imports only ``format.py``); the reader serves one
(``reader.SelectionReader``, ``reader.open_selection``) and the writer reports one (``writer.build_from_cover``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine.data.cache import format as fmt

SELECTION = ("split", "rows_sha", "images_sha")  # the key components that say which rows


def settings(key: dict) -> dict:
    """A key dict without what depends on the selection: the rows, and the tabular statistics fitted on them."""
    out = {k: v for k, v in key.items() if k not in SELECTION}
    tabular = out.pop("tabular", None) or {}
    out["tabular_columns"] = [tabular.get("numeric_columns", []), tabular.get("categorical_columns", [])]
    return out


@dataclass
class Cover:
    folder: Path  # the finished cache that holds the rows
    records: np.ndarray  # int64 [N]: the cover's record shown at each position of the split
    changed: str  # '' when its image files are those it was built from, else what changed (changed_images)


def find_cover(cfg, ctx, split: str, key: fmt.CacheKey) -> Optional[Cover]:
    """The smallest finished cache under ``cache.dir`` that serves ``split`` (see the module doc): a fresh one if
    any, else a stale one (``changed`` says why), else None."""
    root = Path(cfg.cache.dir)
    if not root.is_dir():
        return None
    data, want = ctx.split(split), settings(key.to_dict())
    found = []
    for meta_path in root.glob(f"*/{fmt.METADATA}"):
        folder = meta_path.parent
        if folder.name.endswith(fmt.PARTIAL_SUFFIX):
            continue
        try:
            meta = json.loads(meta_path.read_text())
            if settings(meta["key"]) != want:
                continue
            held = np.load(folder / "rows.npy")
            labels = np.load(folder / "labels.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError):
            continue
        records = _records_of(held, data.rows)
        if records is None or not np.array_equal(labels[records], data.labels):
            continue
        paths = [str(ctx.manifest.image_path(int(r), cfg.data.image_column)) for r in held]
        if paths_sha(paths) != meta["key"].get("images_sha"):  # the same rows name other files under this root
            continue
        found.append((len(held), folder, meta, records, paths))
    stale = None
    for _, folder, meta, records, paths in sorted(found, key=lambda f: (f[0], f[1].name)):
        cover = Cover(folder, records, fmt.changed_images(meta, paths, folder))
        if not cover.changed:
            return cover
        stale = stale or cover
    return stale


def _records_of(held: np.ndarray, rows: np.ndarray) -> Optional[np.ndarray]:
    """For each of ``rows``, the index of its entry in ``held`` (one per manifest row); None if one is absent."""
    order = np.argsort(held, kind="stable")
    idx = np.minimum(np.searchsorted(held[order], rows), max(len(held) - 1, 0))
    if len(rows) and (not len(held) or not np.array_equal(held[order][idx], rows)):
        return None
    return order[idx].astype(np.int64) if len(held) else np.zeros(0, np.int64)


def paths_sha(paths: list[str]) -> str:
    """``CacheKey.images_sha`` of these image paths (absolute, in record order)."""
    return hashlib.sha256("\n".join(os.path.abspath(p) for p in paths).encode()).hexdigest()


def refuse_rejects(cover: Cover, cfg, cmd: str, error) -> list[dict]:
    """The cover's rejected records that the selection shows ({record, row, path, reason}, record in the cover);
    under data.on_bad_image=error, ``error`` naming them instead (what a build in error mode would say)."""
    held = set(cover.records.tolist())
    bad = [r for r in fmt.read_rejects(cover.folder) if int(r["record"]) in held]
    if bad and cfg.data.on_bad_image == "error":
        head = "; ".join(f"{r['path']}: {r['reason']}" for r in bad[:5])
        raise error(f"{len(bad)} undecodable image(s) of this selection are left out of {cover.folder} (built with "
                    f"data.on_bad_image=skip): {head}. Set --data.on_bad_image=skip to train without them, or fix the "
                    f"files and rebuild with: {cmd}")
    return bad
