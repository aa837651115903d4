"""The tabular ("questionnaire") branch: numeric features and categorical embeddings into an MLP."""
from __future__ import annotations

import torch
from torch import nn


class TabularMLP(nn.Module):
    def __init__(self, num_numeric: int, cardinalities: list[int], hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(card, min(16, (card + 1) // 2 + 1)) for card in cardinalities)
        in_dim = num_numeric + sum(e.embedding_dim for e in self.embeddings)
        self.mlp = nn.Sequential(nn.Linear(max(in_dim, 1), hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU())
        self.dim = hidden

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric.float()] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        x = torch.cat(parts, dim=1) if parts[0].shape[1] or len(parts) > 1 else numeric.new_zeros(numeric.shape[0], 1)
        return self.mlp(x)
