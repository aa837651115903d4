"""Tabular fields: numeric columns normalised with train statistics, categoricals as indices."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class TabularEncoder:
    """Fitted on the train split only; stored in the cache metadata and in the run folder (preprocess.json, read by
    engine.load_run).

    Missing, unparsable or non-finite numeric values become the train mean (0
    after normalisation); a column none of whose train values parses is refused
    (decimal commas, say), and one with some unparsable values is reported. Categorical values map to 1..K by first appearance in
    sorted order; 0 is the unknown-value slot (unseen at train time or empty).
    """

    numeric_columns: list[str] = field(default_factory=list)
    categorical_columns: list[str] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    vocabs: list[list[str]] = field(default_factory=list)

    @classmethod
    def fit(cls, rows: list[dict], numeric_columns: list[str], categorical_columns: list[str]) -> "TabularEncoder":
        means, stds = [], []
        for col in numeric_columns:
            raw = [r.get(col) for r in rows]
            parsed = [_to_float(v) for v in raw]
            vals = np.array([v for v in parsed if not math.isnan(v)], dtype=np.float64)
            _check_parsed(col, raw, parsed, vals.size)
            mean = float(vals.mean()) if vals.size else 0.0
            std = float(vals.std()) if vals.size > 1 else 1.0
            means.append(mean)
            stds.append(std if std > 1e-12 else 1.0)
        vocabs = [sorted({str(r[c]) for r in rows if r.get(c) not in (None, "")}) for c in categorical_columns]
        return cls(list(numeric_columns), list(categorical_columns), means, stds, vocabs)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes (vocabulary + the unknown slot)."""
        return [len(v) + 1 for v in self.vocabs]

    def encode(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Return (numeric float32 [N, n_num], categorical int64 [N, n_cat])."""
        num = np.zeros((len(rows), len(self.numeric_columns)), dtype=np.float32)
        for j, col in enumerate(self.numeric_columns):
            for i, r in enumerate(rows):
                v = _to_float(r.get(col))
                num[i, j] = 0.0 if math.isnan(v) else (v - self.means[j]) / self.stds[j]
        cat = np.zeros((len(rows), len(self.categorical_columns)), dtype=np.int64)
        for j, col in enumerate(self.categorical_columns):
            lookup = {v: k + 1 for k, v in enumerate(self.vocabs[j])}
            for i, r in enumerate(rows):
                v = r.get(col)
                cat[i, j] = 0 if v in (None, "") else lookup.get(str(v), 0)  # missing is unknown, as in fit()
        return num, cat

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TabularEncoder":
        return cls(**d)


def _to_float(v) -> float:
    """The value as a finite float, or NaN (missing): empty, unparsable, inf and NaN alike."""
    if v is None or v == "":
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _check_parsed(col: str, raw: list, parsed: list[float], n_ok: int) -> None:
    bad = [v for v, f in zip(raw, parsed) if v not in (None, "") and math.isnan(f)]
    if not bad:
        return
    examples = ", ".join(repr(v) for v in list(dict.fromkeys(map(str, bad)))[:5])
    if not n_ok:
        raise ValueError(f"numeric column {col!r}: none of its {len(bad)} non-empty train values is a finite number "
                         f"(e.g. {examples}); write numbers with a decimal point, or list the column in "
                         f"data.categorical_columns")
    log.warning("numeric column %r: %d train values are not finite numbers and are treated as missing (e.g. %s)",
                col, len(bad), examples)
