"""Everything but the pixels, prepared once per run: classes, tokens, tabular fields.

Every loader backend (PIL, cache, DALI) reads its non-image fields from a
``SplitData``; the cache builder stores exactly these arrays, so a batch is the
same whichever backend produced it.

With ``data.group_captions`` a sample is an image with all its captions (the
manifest rows sharing its path): ``caption_*`` hold them, padded to the split's
most captions per image K. A training batch carries one caption per image,
``draw_captions(seed, epoch, row)``: a pure function, so every rank, worker and
resumed run draws the same one; an evaluation batch carries the first in
``input_ids`` and all of them in ``captions_*`` (``caption_fields``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Optional

import numpy as np

from engine.data.config import DataConfig
from engine.data.manifest import Manifest, ManifestError, load_manifest, select_samples
from engine.data.tabular import TabularEncoder


@dataclass
class SplitData:
    """One split's samples, row-aligned: position p describes manifest row ``rows[p]``."""

    split: str
    rows: np.ndarray  # int64 [N] manifest row indices
    paths: list[str]  # absolute image paths
    labels: np.ndarray  # int64 [N]
    input_ids: np.ndarray  # int64 [N, L]
    attention_mask: np.ndarray  # int64 [N, L]
    numeric: np.ndarray  # float32 [N, n_numeric]
    categorical: np.ndarray  # int64 [N, n_categorical]
    # data.group_captions only (None otherwise); input_ids/attention_mask are then each image's first caption
    caption_ids: Optional[np.ndarray] = None  # int64 [N, K, L], zero-padded past caption_count
    caption_mask: Optional[np.ndarray] = None  # int64 [N, K, L]
    caption_count: Optional[np.ndarray] = None  # int64 [N] captions of each image (>= 1)
    caption_rows: Optional[np.ndarray] = None  # int64 [N, K] manifest row of each caption, -1 = padding

    def __len__(self) -> int:
        return len(self.rows)

    def fields(self, positions: np.ndarray, train: bool = False, seed: int = 0, epoch: int = 0) -> dict[str, np.ndarray]:
        """The non-image batch fields for ``positions`` (vectorised gathers, no per-sample Python); with captions,
        ``train``/``seed``/``epoch`` choose them (``caption_fields``)."""
        out = {
            "input_ids": self.input_ids[positions],
            "attention_mask": self.attention_mask[positions],
            "numeric": self.numeric[positions],
            "categorical": self.categorical[positions],
            "labels": self.labels[positions],
            "index": self.rows[positions],
        }
        if self.caption_ids is not None:
            out.update(caption_fields(self.caption_ids, self.caption_mask, self.caption_count, positions, out["index"],
                                      train, seed, epoch))
        return out


def draw_captions(seed: int, epoch: int, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The caption (0..count-1) each image shows in ``epoch``: a hash of (run seed, epoch, the image's first
    manifest row), no RNG state, so it is the same on every rank and worker, and after a mid-epoch resume."""
    key = _draw_key(seed, epoch)
    with np.errstate(over="ignore"):  # splitmix64: wrapping uint64 arithmetic is the point
        z = np.asarray(rows, dtype=np.uint64) + key + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.maximum(np.asarray(counts), 1).astype(np.uint64)).astype(np.int64)


@lru_cache(maxsize=64)
def _draw_key(seed: int, epoch: int) -> np.uint64:
    return np.random.SeedSequence([seed, epoch, 0xCA97]).generate_state(1, np.uint64)[0]


def caption_fields(ids: np.ndarray, mask: np.ndarray, count: np.ndarray, positions: np.ndarray, rows: np.ndarray,
                   train: bool, seed: int, epoch: int, drawn: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Batch fields of ``positions`` from the captions ``ids``/``mask`` [N, K, L], ``count`` [N] (in memory or
    memory-mapped); ``rows`` [B]: the images' first manifest rows.

    Training: ``input_ids``/``attention_mask`` [B, L] = the caption ``draw_captions`` picks for this epoch (only
    that one is read). Evaluation: the first caption there, and every caption in ``captions_ids``/``captions_mask``
    [B, K, L] with ``caption_count`` [B] (captions k >= count are padding). ``drawn``: this epoch's
    ``draw_captions`` of these images, if the caller computed them for the whole split already.
    """
    if train:
        k = drawn if drawn is not None else draw_captions(seed, epoch, rows, count[positions])
        return {"input_ids": np.asarray(ids[positions, k]), "attention_mask": np.asarray(mask[positions, k])}
    ids, mask, count = np.asarray(ids[positions]), np.asarray(mask[positions]), np.asarray(count[positions])
    return {"input_ids": np.ascontiguousarray(ids[:, 0]), "attention_mask": np.ascontiguousarray(mask[:, 0]),
            "captions_ids": ids, "captions_mask": mask, "caption_count": count}


class DataContext:
    """The validated manifest plus what is derived from it (tokenizer, tabular encoding)."""

    def __init__(self, data_cfg: DataConfig, seed: int, text_encoder: Optional[str], text_max_length: int,
                 required_splits: tuple[str, ...] = ("train", "val")):
        self.cfg = data_cfg
        self.seed = seed
        self.text_encoder = text_encoder if data_cfg.text_column else None
        self.text_max_length = text_max_length if self.text_encoder else 0
        self.manifest: Manifest = load_manifest(data_cfg, required_splits=required_splits, seed=seed)
        train_rows = [self.manifest.rows[i] for i in self.manifest.split_indices("train")]
        try:
            self.tabular = TabularEncoder.fit(train_rows, data_cfg.numeric_columns, data_cfg.categorical_columns)
        except ValueError as e:  # a column of the user's manifest: name the file
            raise ManifestError(f"{self.manifest.path}: {e}") from None
        self._splits: dict[str, SplitData] = {}

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @cached_property
    def tokenizer(self):
        from engine.models.text import load_tokenizer

        return load_tokenizer(self.text_encoder) if self.text_encoder else None

    def split(self, split: str) -> SplitData:
        if split not in self._splits:
            self._splits[split] = self._prepare(split)
        return self._splits[split]

    def group_ids(self, split: str, column: str) -> np.ndarray:
        """int64 [N]: each sample's value of manifest ``column`` as a group index (loader.group_column); the
        label column gives the class indices (after data.classes' other pool)."""
        data = self.split(split)
        if column == self.cfg.label_column:
            return data.labels.copy()
        if any(column not in self.manifest.rows[i] for i in data.rows[:1].tolist()):
            raise ManifestError(f"{self.manifest.path}: loader.group_column={column!r} is not a column of the manifest")
        values = np.array(self.manifest.column(column, data.rows), dtype=object)
        return np.unique(values.astype(str), return_inverse=True)[1].astype(np.int64)

    def _tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, length = len(rows), self.text_max_length
        if self.tokenizer is None or not n:
            return np.zeros((n, length), dtype=np.int64), np.zeros((n, length), dtype=np.int64)
        from engine.models.text import tokenize

        ids, mask = tokenize(self.tokenizer, self.manifest.column(self.cfg.text_column, rows), length)
        return ids.numpy(), mask.numpy()

    def _prepare(self, split: str) -> SplitData:
        m = self.manifest
        rows, caption_rows = select_samples(m, self.cfg, split, self.seed)
        numeric, categorical = self.tabular.encode([m.rows[i] for i in rows])
        paths = [str(m.image_path(i, self.cfg.image_column)) for i in rows]
        if caption_rows is None:
            ids, mask = self._tokens(rows)
            return SplitData(split, rows, paths, m.labels[rows], ids, mask, numeric, categorical)
        valid = caption_rows >= 0  # every caption tokenised once, then placed at [image, k]
        flat_ids, flat_mask = self._tokens(caption_rows[valid])
        shape = caption_rows.shape + (self.text_max_length,)
        cap_ids, cap_mask = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        cap_ids[valid], cap_mask[valid] = flat_ids, flat_mask
        return SplitData(split, rows, paths, m.labels[rows], np.ascontiguousarray(cap_ids[:, 0]),
                         np.ascontiguousarray(cap_mask[:, 0]), numeric, categorical, cap_ids, cap_mask,
                         valid.sum(1).astype(np.int64), caption_rows)
