"""The cache reader: find the cache that matches the current settings, map it, check it.

``open_cache(cfg, ctx, split)`` returns a ``CacheReader`` or raises ``CacheError``
with the exact build command when the cache is missing, half-built or stale
(built for another manifest version or other settings). A cache is never used
unless its recorded key equals the key computed from the current run.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine.data.cache import format as fmt
from engine.data.cache import selection as sel

MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


class CacheReader:
    """A finished cache folder, memory-mapped read-only.

    ``images``: uint8 [count, stride] view of ``images.u8`` (record i at row i), or None for a jpeg cache
    (``storage``), whose records are ``encoded`` (uint8 view of ``images.jpg``) at ``offsets``: read pixels
    through ``gather``/``pixels``/``record``, which decode them (``jpeg_decoder``, Pillow unless a loader sets
    one); ``payload(i)`` is record i's stored bytes either way (what its checksum covers);
    ``payload_shape``: (S, S, 3); ``fields[name]``: per-record arrays of
    ``format.FIELDS`` (memory-mapped); ``captions[name]``: those of
    ``format.CAPTION_FIELDS`` when the cache has them (else empty); ``good``: records to serve.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / fmt.METADATA).read_text())
        self.count, self.stride = int(self.meta["count"]), int(self.meta["stride"] or 0)  # jpeg: null
        self.size = int(self.meta["shape"][0])
        self.record_bytes = fmt.record_bytes(self.size)
        self.storage = fmt.key_storage(self.meta["key"])
        self.pixel_file = self.folder / (fmt.IMAGES if self.storage == "raw" else fmt.ENCODED)
        self.encoded = self.offsets = self.jpeg_decoder = None
        if self.storage == "jpeg":
            self.stride = self.record_bytes  # what gather fills: decoded records, no padding
            self.offsets = np.load(self.folder / fmt.OFFSETS)
            self._mm, self.encoded = _map_file(self.pixel_file, int(self.offsets[-1]))
            self.images = None
            from engine.data.cache.decode_jpeg import PillowRecords

            self.jpeg_decoder = PillowRecords(self.size)  # thread-safe: the loader's gather threads share it
        elif self.stride != fmt.record_stride(self.size):
            raise fmt.CacheError(f"{self.folder}: stride {self.stride} does not match size {self.size} (format v{fmt.FORMAT_VERSION})")
        else:
            self._mm, self.images = fmt.open_records(self.pixel_file, self.count, self.stride, writable=False)
        self._identity = _identity(self.pixel_file)  # the file mapped: a rebuild or truncation changes it
        self.rebuild_command = ""  # set by open_cache: what a damage report tells the user to run
        self.fields = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in fmt.FIELDS}
        with_captions = bool(self.meta["key"].get("group_captions"))
        self.captions = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in fmt.CAPTION_FIELDS} \
            if with_captions else {}
        self._draw = None  # (seed, epoch), the caption each record shows in that epoch (_drawn)
        self.good = np.load(self.folder / fmt.GOOD)
        for name, arr in {**self.fields, **self.captions}.items():
            dtype = {**fmt.FIELDS, **fmt.CAPTION_FIELDS}[name]
            if len(arr) != self.count or arr.dtype != dtype:
                raise fmt.CacheError(f"{self.folder}/{name}.npy: {arr.dtype} {arr.shape}, expected {dtype} [{self.count}, ...]")

    @property
    def key(self) -> dict:
        return self.meta["key"]

    def payload(self, i: int) -> np.ndarray:
        """Record ``i``'s stored bytes: its S*S*3 pixels (raw) or its JPEG (jpeg)."""
        if self.images is not None:
            return self.images[i, : self.record_bytes]
        return self.encoded[self.offsets[i] : self.offsets[i + 1]]

    def encoded_records(self, records: np.ndarray) -> list[np.ndarray]:
        """The JPEGs of ``records`` (jpeg caches), views into the map (what a GPU decoder is handed)."""
        return self._stored_jpegs(records)

    def _stored_jpegs(self, records: np.ndarray) -> list[np.ndarray]:
        # records of this folder's images.jpg: a reader serving other positions (selection.py) maps them first
        return [self.payload(int(i)) for i in records]

    def gather(self, records: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[:len(records)]`` (uint8 [>= B, stride] or [>= B, S*S*3]) with the records' HWC pixels."""
        b = len(records)
        if self.images is None:
            self.jpeg_decoder.into(self._stored_jpegs(records), out)
        else:  # out is [>= B, stride] or [>= B, S*S*3]: take from the map's rows cut to that width, one copy
            width = out.shape[1]  # mode!=raise: no buffered copy of out (a scratch + copy was 2x the time)
            np.take(self.images[:, :width], records, axis=0, out=out[:b], mode="clip")

    def pixels(self, records: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] of ``records``, contiguous (a copy)."""
        out = np.empty((len(records), self.record_bytes), np.uint8)
        self.gather(np.asarray(records, np.int64), out)
        return out.reshape(len(records), self.size, self.size, 3)

    def rejects(self) -> list[dict]:
        return fmt.read_rejects(self.folder)

    def batch_fields(self, records: np.ndarray, train: bool = False, seed: int = 0, epoch: int = 0) -> dict[str, np.ndarray]:
        """The non-image ``Batch`` fields of ``records``, named as in ``Batch`` (``rows`` is its ``index``); with
        captions, ``train``/``seed``/``epoch`` choose them as ``SplitData.fields`` does (``caption_fields``)."""
        skip = ("input_ids", "attention_mask") if self.captions else ()  # with captions: chosen from caption_*
        out = {("index" if name == "rows" else name): np.asarray(arr[records])
               for name, arr in self.fields.items() if name not in skip}
        if self.captions:
            from engine.data.context import caption_fields

            c = self.captions
            drawn = self._drawn(seed, epoch)[records] if train else None
            out.update(caption_fields(c["caption_ids"], c["caption_mask"], c["caption_count"], records, out["index"],
                                      train, seed, epoch, drawn))
        return out

    def _drawn(self, seed: int, epoch: int) -> np.ndarray:
        """``draw_captions`` of every record for (seed, epoch), computed once per epoch (per batch it was a
        sizeable share of the gather); gather threads racing at an epoch start compute the same array."""
        if self._draw is None or self._draw[0] != (seed, epoch):
            from engine.data.context import draw_captions

            self._draw = ((seed, epoch), draw_captions(seed, epoch, self.fields["rows"], self.captions["caption_count"]))
        return self._draw[1]

    def check_intact(self, epoch: int = 0, samples: int = 16) -> None:
        """Before an epoch reads the map: images.u8 is still the file that was mapped, at its full size (a
        truncated map is a SIGBUS, not an exception), and ``samples`` seeded records match their checksums."""
        path = self.pixel_file
        now = _identity(path)
        if now != self._identity:
            what = ("is gone" if now is None else f"is {now[2]} bytes, was {self._identity[2]}" if now[2] != self._identity[2]
                    else "was replaced (another inode or modification time)")
            self._damaged(f"{path} {what} since it was opened")
        sums = np.load(self.folder / fmt.CHECKSUMS, mmap_mode="r")
        picks = np.random.default_rng([epoch, 0xC4EC]).choice(self.good, size=min(samples, len(self.good)), replace=False)
        bad = [int(i) for i in picks if fmt.checksum(self.payload(int(i))) != int(sums[i])]
        if bad:
            self._damaged(f"{path}: records {bad[:5]} no longer match their checksums")

    def _damaged(self, what: str) -> None:
        raise fmt.CacheError(f"the cache {self.folder} was damaged while in use: {what}. Delete {self.folder} and "
                             f"rebuild it{' with: ' + self.rebuild_command if self.rebuild_command else ''}")

    def record(self, i: int) -> np.ndarray:
        """Record ``i`` as uint8 [S, S, 3] (raw: a view into the map; jpeg: decoded)."""
        if self.images is None:  # decoded here, not through gather: a selection maps i before it calls this
            out = np.empty((1, self.record_bytes), np.uint8)
            self.jpeg_decoder.into(self._stored_jpegs([i]), out)
            return out.reshape(self.size, self.size, 3)
        return self.images[i, : self.record_bytes].reshape(self.size, self.size, 3)

    def drop_pages(self) -> None:
        """Unmap the pages touched so far (they stay in the page cache): keeps RSS flat over a pass."""
        if MADV_DONTNEED is None:
            return
        maps = [self._mm] + [getattr(a, "_mmap", None) for a in (*self.fields.values(), *self.captions.values())]
        for m in maps:
            if m is not None:
                m.madvise(MADV_DONTNEED)


def open_cache(cfg, ctx, split: str) -> CacheReader:
    """The cache of ``split`` for this run, or CacheError saying why not and how to build it."""
    key = fmt.cache_key(cfg, ctx, split)
    folder = fmt.cache_dir(cfg, key)
    cmd = fmt.build_command(cfg, split)
    if not (folder / fmt.METADATA).is_file():
        served = open_selection(cfg, ctx, split, key, cmd)  # a subset or fold of a cache that holds its rows
        if served is not None:
            return served
        partial = folder.with_name(folder.name + fmt.PARTIAL_SUFFIX)
        if partial.is_dir():
            raise fmt.CacheError(f"the {split} cache {partial} is only partly built (interrupted build); "
                                 f"finish it (it resumes) with: {cmd}")
        stale = _stale_reasons(Path(cfg.cache.dir), key)
        if stale:
            raise fmt.CacheError(f"the {split} cache in {cfg.cache.dir} is stale, refusing to use it: {stale}. "
                                 f"Rebuild it with: {cmd}")
        raise fmt.CacheError(f"no {split} cache for these settings in cache.dir={cfg.cache.dir} (expected {folder}); build it with: {cmd}")
    reader = CacheReader(folder)
    if reader.key != key.to_dict():
        raise fmt.CacheError(f"{folder} was built for other settings ({_diff(reader.key, key.to_dict())}); "
                             f"delete it and rebuild with: {cmd}")
    fmt.refuse_rejects_in_error_mode(folder, reader.meta, cfg.data.on_bad_image, cmd)
    changed = fmt.changed_images(reader.meta, ctx.split(split).paths, folder)
    if changed:
        raise fmt.CacheError(f"{folder} holds stale pixels: {changed}. Rebuild it (the build notices and decodes "
                             f"again) with: {cmd}")
    reader.rebuild_command = cmd
    return reader


class SelectionReader(CacheReader):
    """``split`` served from a cover: its records' pixels (position i shows the cover's record ``pixel_index[i]``)
    under this run's own fields (``data``, the split's SplitData). ``good``: the positions whose record the
    cover serves (its rejected records stay out)."""

    def __init__(self, cover: sel.Cover, data):
        super().__init__(cover.folder)
        self.served_from = cover.folder
        self.pixel_index = cover.records
        self.count = len(data)
        self.fields = {name: getattr(data, name) for name in fmt.FIELDS}
        self.captions = {name: getattr(data, name) for name in fmt.CAPTION_FIELDS} if data.caption_ids is not None else {}
        self.good = np.flatnonzero(np.isin(cover.records, self.good)).astype(np.int64)

    def gather(self, records: np.ndarray, out: np.ndarray) -> None:
        super().gather(self.pixel_index[records], out)

    def record(self, i: int) -> np.ndarray:
        return super().record(int(self.pixel_index[i]))

    def encoded_records(self, records: np.ndarray) -> list[np.ndarray]:
        return super().encoded_records(self.pixel_index[records])  # jpeg covers: what DALI / nvJPEG decode

    def check_intact(self, epoch: int = 0, samples: int = 16) -> None:
        """The cover's check, over the cover's records this selection serves."""
        served, self.good = self.good, np.unique(self.pixel_index[self.good])
        try:
            super().check_intact(epoch, samples)
        finally:
            self.good = served


def open_selection(cfg, ctx, split: str, key: fmt.CacheKey, cmd: str) -> Optional[SelectionReader]:
    """``split`` served from a cover, None if no cache covers it; CacheError if the cover's image files changed or
    it leaves out undecodable images of the split under data.on_bad_image=error."""
    cover = sel.find_cover(cfg, ctx, split, key)
    if cover is None:
        return None
    if cover.changed:
        raise fmt.CacheError(f"the {split} rows are in {cover.folder}, which holds stale pixels: {cover.changed}. "
                             f"Build the {split} cache (the build decodes again) with: {cmd}")
    sel.refuse_rejects(cover, cfg, cmd, fmt.CacheError)
    reader = SelectionReader(cover, ctx.split(split))
    reader.rebuild_command = cmd
    return reader


def _map_file(path: Path, size: int):
    """(mmap, uint8 view) of a whole file of ``size`` bytes, read-only; a size mismatch is a CacheError."""
    if size == 0:
        return None, np.zeros(0, np.uint8)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            raise fmt.CacheError(f"{path}: size {os.fstat(f.fileno()).st_size} bytes, expected {size} (offsets.npy)")
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    return mm, np.frombuffer(mm, dtype=np.uint8)


def _identity(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _diff(old: dict, new: dict) -> str:
    """Human-readable differences between two key dicts."""
    out = []
    for k in new:
        if old.get(k) != new[k]:
            if k == "manifest_version":
                out.append(f"the manifest changed (sha256 {str(old.get(k))[:12]}... -> {new[k][:12]}...)")
            elif k == "images_sha":
                out.append("the image paths changed (data.root, data.image_column or the rows)")
            elif k in ("tabular", "classes", "rows_sha"):
                out.append(f"{k} changed")
            else:
                out.append(f"{k}: cache has {old.get(k)!r}, settings say {new[k]!r}")
    return "; ".join(out) or "format changed"


def _stale_reasons(root: Path, key: fmt.CacheKey) -> str:
    """Describe how the most recent other cache of the same split differs from ``key``, or ''."""
    if not root.is_dir():
        return ""
    metas = sorted((root.glob(f"{key.split}-*/{fmt.METADATA}")), key=lambda p: p.stat().st_mtime, reverse=True)
    for m in metas:
        try:
            old = json.loads(m.read_text())["key"]
        except (OSError, ValueError, KeyError):
            continue
        return f"{m.parent.name}: {_diff(old, key.to_dict())}"
    return ""


@dataclass
class VerifyReport:
    folder: Path
    count: int
    bad: list[dict]  # {record, row}

    def line(self) -> str:
        if not self.bad:
            return f"{self.folder}: all {self.count} records match their checksums"
        head = "; ".join(f"record {b['record']} (manifest row {b['row']})" for b in self.bad[:5])
        return f"{self.folder}: {len(self.bad)} of {self.count} records do NOT match their checksums: {head}"


def verify_cache(folder: Path) -> VerifyReport:
    """Check every record of a finished cache against ``checksums.npy``."""
    try:
        reader = CacheReader(folder)
        sums = np.load(Path(folder) / fmt.CHECKSUMS)
    except (OSError, ValueError, KeyError) as e:  # files missing, truncated or unreadable
        raise fmt.CacheError(f"{folder} is damaged or incomplete ({type(e).__name__}: {e}); delete it and rebuild") from None
    bad = fmt.bad_payloads(reader.payload, sums, desc=f"verify {Path(folder).name}")
    rows = reader.fields["rows"]
    return VerifyReport(Path(folder), reader.count, [{"record": i, "row": int(rows[i])} for i in bad])
