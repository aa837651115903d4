"""The tabular ("questionnaire") branch: numeric features and categorical embeddings into an MLP."""
from __future__ import annotations

import torch
from torch import nn


def embedding_dim(cardinality: int) -> int:
    """A small embedding per categorical column: about half its cardinality, at most 16."""
    return min(16, (cardinality + 1) // 2 + 1)


class TabularMLP(nn.Module):
    """numeric [B, num_numeric] float + categorical [B, len(cardinalities)] long -> [B, hidden].

    Categorical codes are expected in [0, cardinality) (the data encoder reserves one code
    for unknown values). A model with no tabular columns at all is refused: switch the
    branch off with ``model.use_tabular=false`` instead.
    """

    def __init__(self, num_numeric: int, cardinalities: list[int], hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        if num_numeric <= 0 and not cardinalities:
            raise ValueError("TabularMLP needs numeric or categorical columns (or model.use_tabular=false)")
        self.num_numeric = num_numeric
        self.embeddings = nn.ModuleList(nn.Embedding(card, embedding_dim(card)) for card in cardinalities)
        in_dim = num_numeric + sum(e.embedding_dim for e in self.embeddings)
        # No normalisation across the input: numeric columns arrive standardised and embeddings start N(0, 1), and a
        # LayerNorm over different columns would erase each row's level and scale (one numeric column: a constant).
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.dim = hidden

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        parts = [emb(categorical[:, i]).to(dtype) for i, emb in enumerate(self.embeddings)]
        if self.num_numeric:
            parts.insert(0, numeric.to(dtype))
        return self.mlp(torch.cat(parts, dim=1))
