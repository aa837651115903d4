"""The on-disk format of a decode cache: the one definition the writer and the reader share.

A cache of one split is a folder ``<cache.dir>/<split>-<key[:12]>/``::

    images.u8        uint8, N records of ``stride`` bytes at offset i * stride (stride is
                     a multiple of 4 KiB); record i holds image i as HWC RGB
                     [S, S, 3] in its first S*S*3 bytes, the rest is zero padding
    checksums.npy    uint32 [N]   zlib.crc32 of each record's S*S*3 payload bytes
    rows.npy         int64  [N]   manifest row of record i
    labels.npy       int64  [N]
    input_ids.npy    int64  [N, L]
    attention_mask.npy int64 [N, L]
    numeric.npy      float32 [N, n_numeric]
    categorical.npy  int64  [N, n_categorical]
    good.npy         int64  [M]   records the reader serves (all but the rejected ones), ascending
    caption_ids.npy  int64  [N, K, L]  }  data.group_captions only (CAPTION_FIELDS): every caption of
    caption_mask.npy int64  [N, K, L]  }  record i's image, K = the split's most captions per image,
    caption_count.npy int64 [N]        }  zero-padded; records stay one per image, so each photo is
    caption_rows.npy int64  [N, K]     }  decoded once (-1 = padding row)
    rejects.csv      record,row,path,reason  (header only when nothing was rejected)
    images.jpg       }  cache.storage=jpeg instead of images.u8: record i is the JPEG (cache.jpeg_quality) of the
    offsets.npy      }  same S x S x 3 pixels at bytes [offsets[i], offsets[i+1]) of images.jpg (int64 [N + 1];
                        a rejected record is empty); checksums.npy then holds the crc32 of each record's JPEG bytes
    metadata.json    how it was built: the key components, counts, stride, shape, versions
                     (and ``pixels_from``, the cache whose images.u8 it reuses, if any)
    origin.json      what it was built from: manifest path, data settings, working directory (written by
                     tools/build_cache.py after the build; read by inventory.py to tell a stale cache)

A seeded subset or a fold has no folder of its own when a finished cache holds its rows: ``selection.py``
serves it from that cache's records.

Record i is split position i (``DataContext.split(split)`` order), whether or
not its image was good, so a record's offset never depends on other records
and parallel builders can write straight into the file. A rejected record
stays zero-filled and is left out of ``good.npy``.

The pixels depend on fewer settings than the rest (``PIXEL_KEY``): a cache whose
text or tabular settings differ from an existing one (another tokenizer or
max length, the image-only recipe, a text fix in the manifest) reuses that
cache's finished ``images.u8`` -- hard-linked, since finished caches are never
written again -- instead of decoding every photo again, provided the image
files are unchanged since that cache was built (``images_fingerprint``: every
file's size and modification time, recorded in ``metadata.json``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import mmap
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import UserError

FORMAT_VERSION = 1
ALIGN = 4096  # record alignment: page-aligned records map and flush independently
IMAGES = "images.u8"
CHECKSUMS = "checksums.npy"
GOOD = "good.npy"
REJECTS = "rejects.csv"
METADATA = "metadata.json"
ENCODED = "images.jpg"  # cache.storage=jpeg: the records' JPEGs, back to back
OFFSETS = "offsets.npy"
PARTIAL_SUFFIX = ".partial"
CHUNKS = "chunks"  # inside a .partial folder: one JSON per finished chunk (the progress bitmap)
KEY_FILE = "key.json"  # inside a .partial folder: the key it is being built for
SHARDS = "shards"  # inside a .partial folder: one lock (and claim note) per shard of a sharded build (shards.py)

# The per-record fields stored beside the pixels: name -> dtype (shape [N, ...] as in SplitData).
FIELDS: dict[str, np.dtype] = {
    "rows": np.dtype(np.int64),
    "labels": np.dtype(np.int64),
    "input_ids": np.dtype(np.int64),
    "attention_mask": np.dtype(np.int64),
    "numeric": np.dtype(np.float32),
    "categorical": np.dtype(np.int64),
}
# Written beside FIELDS when the key has group_captions (SplitData.caption_*; metadata.json "fields" lists them).
CAPTION_FIELDS: dict[str, np.dtype] = {
    "caption_ids": np.dtype(np.int64),
    "caption_mask": np.dtype(np.int64),
    "caption_count": np.dtype(np.int64),
    "caption_rows": np.dtype(np.int64),
}


class CacheError(UserError, RuntimeError):
    """A cache is missing, stale, incomplete or corrupt; the message says how to rebuild it."""


def record_bytes(size: int) -> int:
    """Payload bytes of one record: an S x S x 3 uint8 image."""
    return size * size * 3


def record_stride(size: int) -> int:
    """Bytes between consecutive records: the payload rounded up to ALIGN."""
    return -(-record_bytes(size) // ALIGN) * ALIGN


def checksum(payload: np.ndarray | bytes | memoryview) -> int:
    import zlib

    return zlib.crc32(payload) & 0xFFFFFFFF


@dataclass(frozen=True)
class CacheKey:
    """Everything that decides a cache's content; its hash names the folder."""

    manifest_version: str  # sha256 of the manifest file
    split: str
    rows_sha: str  # sha256 of the selected manifest rows (covers max_*_samples and the seed)
    images_sha: str  # sha256 of the records' absolute image paths, in order (covers data.root and the image column)
    image_column: str
    text_column: str  # "" without text
    label_column: str
    stored_size: int
    resize_policy: str
    draft: bool  # libjpeg DCT downscaling changes pixels slightly, so it is part of the key
    tokenizer: str  # text encoder name ("" without text)
    max_length: int
    tabular: dict  # TabularEncoder.to_dict()
    classes: list
    format_version: int = FORMAT_VERSION
    group_captions: bool = False  # records are images with all their captions (CAPTION_FIELDS)
    storage: str = "raw"  # "raw" uint8 records (images.u8) or "jpeg" (images.jpg + offsets.npy)
    jpeg_quality: int = 0  # the JPEG quality of storage "jpeg" records (0 for raw)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        if not d["group_captions"]:  # added after format v1 caches existed: absent when off, so they keep their key
            del d["group_captions"]
        if d["storage"] == "raw":  # likewise: raw caches keep the key they had before storage existed
            del d["storage"], d["jpeg_quality"]
        return d

    @property
    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def folder_name(self) -> str:
        return f"{self.split}-{self.digest[:12]}"

    @property
    def pixel_key(self) -> dict:
        """The components that decide ``images.u8`` (and its checksums and rejects)."""
        d = self.to_dict()
        return {k: d.get(k) for k in PIXEL_KEY}  # like a stored key's .get: a raw key has no storage entry


# storage/jpeg_quality: a raw and a jpeg cache never share pixel files
PIXEL_KEY = ("split", "images_sha", "stored_size", "resize_policy", "draft", "format_version", "storage", "jpeg_quality")


def pixel_files(storage: str) -> tuple[str, ...]:
    """The files that hold the records of a cache of ``storage`` (what a pixel reuse links)."""
    return (IMAGES,) if storage == "raw" else (ENCODED, OFFSETS)


def key_storage(key: dict) -> str:
    """The storage of a stored key dict (caches from before cache.storage are raw)."""
    return key.get("storage", "raw")


def cache_key(cfg, ctx, split: str) -> CacheKey:
    """The key of ``split``'s cache under run config ``cfg`` and data context ``ctx``."""
    from engine.data.manifest import select_samples

    rows, caption_rows = select_samples(ctx.manifest, cfg.data, split, ctx.seed)
    paths = "\n".join(os.path.abspath(ctx.manifest.image_path(i, cfg.data.image_column)) for i in rows)
    selected = rows.tobytes() if caption_rows is None else caption_rows.tobytes() + str(caption_rows.shape).encode()
    return CacheKey(
        manifest_version=ctx.manifest.version,
        split=split,
        rows_sha=hashlib.sha256(selected).hexdigest(),
        images_sha=hashlib.sha256(paths.encode()).hexdigest(),
        image_column=cfg.data.image_column,
        text_column=cfg.data.text_column or "",
        label_column=cfg.data.label_column,
        stored_size=cfg.cache.stored_size,
        resize_policy=cfg.cache.resize_policy,
        draft=cfg.cache.draft,
        tokenizer=ctx.text_encoder or "",
        max_length=ctx.text_max_length,
        tabular=ctx.tabular.to_dict(),
        classes=list(ctx.classes),
        group_captions=bool(cfg.data.group_captions),
        storage=cfg.cache.storage,
        jpeg_quality=cfg.cache.jpeg_quality if cfg.cache.storage == "jpeg" else 0,
    )


def images_fingerprint(paths: list[str]) -> str:
    """sha256 over each image file's path, size and modification time (a replaced or fixed file changes it)."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def cache_dir(cfg, key: CacheKey) -> Path:
    return Path(cfg.cache.dir) / key.folder_name


def build_command(cfg, split: str) -> str:
    """The exact command that (re)builds ``split``'s cache for ``cfg``.

    The recipe and the overrides are the ones ``cfg`` was loaded from (``cfg.origin``, set by
    ``engine.config.load_config``: the ``--config`` file, or ``RUN/config.yaml`` for ``--run RUN``, whose
    resolved config loads as a recipe). The command repeats those overrides of settings that enter the cache
    key (``--data.*``, ``--cache.*``, ``--run.seed``, ``--model.text_encoder``, ``--model.text_max_length``),
    and spells out the pixel settings and the tokenizer length in any case, so the command is right even if
    the recipe has been edited since.
    """
    recipe = cfg.origin.recipe or "CONFIG.yaml"
    over = {k: v for k, v in cfg.origin.overrides if k.startswith(_KEY_OVERRIDES) and k != "cache.splits"}
    over.update({
        "data.manifest": cfg.data.manifest,
        "cache.dir": cfg.cache.dir,
        "cache.stored_size": cfg.cache.stored_size,
        "cache.resize_policy": cfg.cache.resize_policy,
        "cache.draft": str(cfg.cache.draft).lower(),
        "model.text_max_length": cfg.model.text_max_length,
        "cache.splits": f"[{split}]",
    })
    if cfg.data.root:
        over["data.root"] = cfg.data.root
    if cfg.cache.storage != "raw":
        over.update({"cache.storage": cfg.cache.storage, "cache.jpeg_quality": cfg.cache.jpeg_quality})
    parts = ["python", "tools/build_cache.py", "--config", recipe] + [f"--{k}={v}" for k, v in over.items()]
    return " ".join(shlex.quote(str(p)) for p in parts)


_KEY_OVERRIDES = ("data.", "cache.", "run.seed", "model.text_encoder", "model.text_max_length")


def open_records(path: Path, n: int, stride: int, writable: bool) -> tuple[mmap.mmap | None, np.ndarray]:
    """Map ``images.u8`` as uint8 [n, stride]; returns (mmap, view). n == 0 maps nothing."""
    if n == 0:
        return None, np.zeros((0, stride), np.uint8)
    size = n * stride
    with open(path, "r+b" if writable else "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            raise CacheError(f"{path}: size {os.fstat(f.fileno()).st_size} bytes, expected {n} x {stride} = {size}")
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    return mm, np.frombuffer(mm, dtype=np.uint8).reshape(n, stride)


def library_versions() -> dict:
    import PIL

    return {"format": FORMAT_VERSION, "pillow": PIL.__version__, "numpy": np.__version__}


# --- shared by the writer and the reader (neither imports the other) -------------------------


class CacheBuildError(CacheError):
    """Bad images in ``data.on_bad_image=error`` mode; the message names files and manifest rows."""


def changed_images(meta: dict, paths: list[str], folder: Path) -> str:
    """'' if the image files are those the cache was built from (``format.images_fingerprint``: one stat per file),
    else how many changed and which (files modified after the cache was written; a replaced file with an old
    time only shows in the count). Caches built before the fingerprint was recorded are not checked."""
    recorded = meta.get("images_fingerprint")
    if not recorded or images_fingerprint(paths) == recorded:
        return ""
    built = (Path(folder) / METADATA).stat().st_mtime_ns
    newer = [p for p in paths if not os.path.exists(p) or os.stat(p).st_mtime_ns > built]
    return (f"image files changed since it was built (size or modification time), e.g. {', '.join(newer[:5])}"
            if newer else "image files changed since it was built (size or modification time)")


def read_rejects(folder: Path) -> list[dict]:
    """``rejects.csv`` of a finished cache: {record, row, path, reason} as strings."""
    with open(Path(folder) / REJECTS, newline="") as f:
        return list(csv.DictReader(f))


def refuse_rejects_in_error_mode(folder: Path, meta: dict, on_bad_image: str, cmd: str, error=CacheError) -> None:
    """A cache built with data.on_bad_image=skip leaves its bad images out; under 'error' that must stop the run,
    as a build in 'error' mode would have, naming the files and rows (``meta``: the cache's metadata.json)."""
    if on_bad_image != "error" or not int(meta.get("rejected", 0)):
        return
    rejects = read_rejects(folder)
    head = "; ".join(f"manifest row {r['row']}: {r['path']}: {r['reason']}" for r in rejects[:5])
    raise error(f"{folder} leaves out {len(rejects)} undecodable image(s), listed in {Path(folder) / REJECTS} "
                f"(it was built with data.on_bad_image=skip): {head}. With data.on_bad_image=error they stop the run: "
                f"set --data.on_bad_image=skip to train without them, or fix the files, delete {folder} and "
                f"rebuild with: {cmd}")


def bad_payloads(payload_of, sums: np.ndarray, desc: str = "verify") -> list[int]:
    """Indices i whose ``payload_of(i)`` (the stored bytes of record i) does not match ``sums[i]``."""
    from tqdm import tqdm

    return [i for i in tqdm(range(len(sums)), desc=desc, unit="rec", mininterval=1.0, leave=False, disable=None)  # None: off without a TTY
            if checksum(payload_of(i)) != int(sums[i])]
