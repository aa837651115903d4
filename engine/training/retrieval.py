"""Evaluation of a dual encoder: image-text retrieval (recall@K, ranks) and zero-shot classification.

Each rank embeds its shard of the split's images and all their captions; the
embeddings are gathered (padding duplicates of the last shards removed by
manifest row, as for classification), and the metrics are computed in chunks
(``engine.training.retrieval_metrics``), so no images x captions matrix is held.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from engine.config import Config
from engine.training.distributed import DistInfo, all_gather_cat


@torch.no_grad()
def embed_split(engine, loader, pipe, dist: DistInfo, num_classes: int) -> dict[str, np.ndarray]:
    """Gathered embeddings of one split, each image once: rows [N], labels [N], image [N, D],
    text [T, D] (every caption of every image) and text_image [T] (position of each caption's image)."""
    engine.eval()
    model = engine.module
    rows, labels, images, texts, valid = [], [], [], [], []
    for batch in tqdm(loader, desc="embed", disable=not dist.is_main, unit="batch", leave=False):
        inputs, targets, batch = pipe(batch, False, 0, num_classes)
        ids, mask, count = _captions(batch)
        b, k, length = ids.shape
        ok = torch.arange(k, device=count.device)[None, :] < count[:, None]  # [B, K]
        text = torch.zeros(b, k, 0, device=ids.device)
        if ok.any():
            flat = model.encode_text(ids[ok], mask[ok]).float()
            text = flat.new_zeros(b, k, flat.shape[1])
            text[ok] = flat
        rows.append(batch.index)
        labels.append(targets)
        images.append(model.encode_image(inputs["images"]).float())
        texts.append(text)
        valid.append(ok)
    rows, labels, images, texts, valid = (all_gather_cat(torch.cat(t)).cpu().numpy()
                                          for t in (rows, labels, images, texts, valid))
    _, first = np.unique(rows, return_index=True)  # drop the padding duplicates of the last shards
    rows, labels, images, texts, valid = rows[first], labels[first], images[first], texts[first], valid[first]
    text_image = np.repeat(np.arange(len(rows)), valid.sum(1))
    return {"rows": rows, "labels": labels, "image": images, "text": texts[valid], "text_image": text_image}


def _captions(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All captions of each image [B, K, L] and their count [B]; one caption per image without data.group_captions."""
    if getattr(batch, "captions_ids", None) is not None:
        return batch.captions_ids, batch.captions_mask, batch.caption_count
    ones = torch.ones(batch.input_ids.shape[0], dtype=torch.long, device=batch.input_ids.device)
    return batch.input_ids[:, None], batch.attention_mask[:, None], ones


def evaluate_retrieval(engine, loader, pipe, ctx, cfg: Config, dist: DistInfo, split: str) -> dict:
    """``{split}_i2t_r1`` ... ``{split}_median_rank`` (and zero-shot ``{split}_zeroshot_top1`` / ``_f1_macro`` when
    ``eval.zero_shot_prompt`` is set), identical on every rank."""
    from engine.training.retrieval_metrics import retrieval_metrics

    emb = embed_split(engine, loader, pipe, dist, len(ctx.classes))
    metrics = retrieval_metrics(emb["image"], emb["text"], emb["text_image"])
    out = {f"{split}_{k}": float(v) for k, v in metrics.items()}
    out[f"{split}_num_samples"] = int(len(emb["rows"]))  # images scored (the key every task's summary reads)
    if cfg.eval.zero_shot_prompt:
        out.update({f"{split}_zeroshot_{k}": v for k, v in zero_shot(engine, ctx, cfg, emb).items()})
    return out


@torch.no_grad()
def zero_shot(engine, ctx, cfg: Config, emb: Optional[dict] = None) -> dict:
    """Score each image against one prompt per class (``eval.zero_shot_prompt``, e.g. "a photo of {}")."""
    from engine.models.text import tokenize
    from engine.training.retrieval_metrics import class_prompts, zero_shot_metrics

    model = engine.module
    device = next(model.parameters()).device
    ids, mask = tokenize(ctx.tokenizer, class_prompts(cfg.eval.zero_shot_prompt, ctx.classes), ctx.text_max_length)
    class_emb = model.encode_text(ids.to(device), mask.to(device)).float().cpu().numpy()
    metrics = zero_shot_metrics(emb["image"], class_emb, emb["labels"], ctx.classes)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
