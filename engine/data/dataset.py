"""Everything but the pixels, prepared once per run: classes, tokens, tabular fields.

Every loader backend (PIL, cache, DALI) reads its non-image fields from a
``SplitData``; the cache builder stores exactly these arrays, so a batch is the
same whichever backend produced it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np

from engine.data.config import DataConfig
from engine.data.manifest import Manifest, ManifestError, load_manifest, select_split, split_limit
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

    def __len__(self) -> int:
        return len(self.rows)

    def fields(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The non-image batch fields for ``positions`` (vectorised gathers, no per-sample Python)."""
        return {
            "input_ids": self.input_ids[positions],
            "attention_mask": self.attention_mask[positions],
            "numeric": self.numeric[positions],
            "categorical": self.categorical[positions],
            "labels": self.labels[positions],
            "index": self.rows[positions],
        }


class DataContext:
    """The validated manifest plus what is derived from it (tokenizer, tabular encoding)."""

    def __init__(self, data_cfg: DataConfig, seed: int, text_encoder: Optional[str], text_max_length: int,
                 required_splits: tuple[str, ...] = ("train", "val")):
        self.cfg = data_cfg
        self.seed = seed
        self.text_encoder = text_encoder if data_cfg.text_column else None
        self.text_max_length = text_max_length if self.text_encoder else 0
        self.manifest: Manifest = load_manifest(data_cfg, required_splits=required_splits)
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

    def _prepare(self, split: str) -> SplitData:
        m = self.manifest
        rows = select_split(m, split, split_limit(self.cfg, split), self.seed)
        n, length = len(rows), self.text_max_length
        if self.tokenizer is not None and n:
            from engine.models.text import tokenize

            ids, mask = tokenize(self.tokenizer, m.column(self.cfg.text_column, rows), length)
            ids, mask = ids.numpy(), mask.numpy()
        else:
            ids = mask = np.zeros((n, length), dtype=np.int64)
        numeric, categorical = self.tabular.encode([m.rows[i] for i in rows])
        paths = [str(m.image_path(i, self.cfg.image_column)) for i in rows]
        return SplitData(split, rows.astype(np.int64), paths, m.labels[rows], ids, mask, numeric, categorical)
