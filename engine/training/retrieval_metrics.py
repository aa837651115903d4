"""Image-text retrieval and zero-shot classification metrics from embeddings, in blocks (CPU or GPU).

Protocol (Flickr30k / COCO Karpathy): scores are dot products (pass L2-normalised
embeddings for cosine similarity); every image is a query over all captions and
every caption a query over all images.

* text -> image: the rank of a caption is the 1-based position of its own image
  among all images;
* image -> text: the rank of an image is the rank of its best-ranked caption
  among all captions (a hit at K when ANY of its captions is in its top K);
  images without captions are no i2t query;
* ties: a candidate with the same score as the positive ranks ahead of it when
  its index is lower (the order of a stable sort by descending score), so
  ranks are deterministic and match ``argsort(-scores, kind="stable")``.

``mean_rank`` / ``median_rank`` are over the pooled ranks of both directions'
queries (images with captions + captions, 1-based); ``i2t_*`` / ``t2i_*``
variants are per direction. Recall@K is a fraction in [0, 1]; ``rsum`` is the
sum of the six recalls in percent (0..600), the usual single figure.

Memory: the score matrix is never held. Scores come in blocks of
``chunk`` images x ``text_chunk`` captions (one matmul each); a rank is
1 + the number of candidates scoring strictly higher than the positive, plus
the tied ones of lower index, counted per block, so both directions come out of
one pass over the blocks. A block whose candidates all lie below the positive's
index counts those at or above its score (compared with the next representable
score below it), one all above counts those strictly above: one compare-and-sum
per direction and block, ties looked at only where the positive's index falls
inside the block. The positive pair's own score is computed once (``pos``) and
written over its entry in whichever block holds it, so a pair is never compared
against a re-rounded copy of itself.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10)


def _as_tensor(x, dtype: torch.dtype, device: Optional[torch.device]) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device if device is not None else t.device, dtype=dtype)


@torch.no_grad()
def retrieval_ranks(image_emb, text_emb, text_image, chunk: int = 256, text_chunk: int = 8192,
                    dtype: torch.dtype = torch.float32, device: Optional[torch.device | str] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(i2t int64 [Ni], t2i int64 [Nt]): 1-based ranks as the module doc defines them; i2t is 0 for an image
    without captions. ``image_emb`` [Ni, D], ``text_emb`` [Nt, D] (numpy or torch), ``text_image`` int [Nt]:
    the image index of each caption. ``dtype``: of the matmuls and comparisons (bf16 halves memory traffic but
    makes ties common: the rule above decides them)."""
    device = torch.device(device) if device is not None else None
    img = _as_tensor(image_emb, dtype, device)
    txt = _as_tensor(text_emb, dtype, img.device)
    own = torch.as_tensor(np.asarray(text_image), dtype=torch.long, device=img.device)
    ni, nt = img.shape[0], txt.shape[0]
    if txt.shape[1] != img.shape[1] or own.shape != (nt,):
        raise ValueError(f"image_emb {tuple(img.shape)}, text_emb {tuple(txt.shape)} and text_image "
                         f"{tuple(own.shape)} do not match ([Ni, D], [Nt, D], [Nt])")
    if nt and (int(own.min()) < 0 or int(own.max()) >= ni):
        raise ValueError(f"text_image holds image indices outside 0..{ni - 1}")
    # the positive score of each caption, once (in blocks: never an [Nt, D] gather of images at once)
    pos = torch.empty(nt, dtype=dtype, device=img.device)
    for t0 in range(0, nt, text_chunk):
        t1 = min(t0 + text_chunk, nt)
        pos[t0:t1] = (txt[t0:t1].float() * img[own[t0:t1]].float()).sum(1).to(dtype)
    # each image's best caption score and the lowest caption index reaching it (its tie-break position)
    best = torch.full((ni,), float("-inf"), dtype=torch.float32, device=img.device)
    best.scatter_reduce_(0, own, pos.float(), reduce="amax")
    best = best.to(dtype)
    at_best = pos == best[own]
    first = torch.full((ni,), nt, dtype=torch.long, device=img.device)
    first.scatter_reduce_(0, own[at_best], torch.arange(nt, device=img.device)[at_best], reduce="amin")
    has_caption = first < nt
    by_image = torch.argsort(own, stable=True)  # captions grouped by image, to find a block's positives
    starts = torch.searchsorted(own[by_image], torch.arange(ni + 1, device=img.device))

    # "ahead of the positive" is ">= its score" for candidates of lower index and "> its score" for higher ones;
    # a block of candidates all below (all above) the positive's index compares with the next score below
    # (the score itself), so each direction is one compare-and-sum pass over the block. Only the few queries
    # whose positive index falls inside the block need a second look (_add_ties).
    minus_inf = torch.tensor(float("-inf"), dtype=dtype, device=img.device)
    pos_below, best_below = torch.nextafter(pos, minus_inf), torch.nextafter(best, minus_inf)
    i2t = torch.ones(ni, dtype=torch.long, device=img.device)
    t2i = torch.ones(nt, dtype=torch.long, device=img.device)
    for a in range(0, ni, chunk):
        b = min(a + chunk, ni)
        qi = img[a:b]
        block_pos = by_image[starts[a] : starts[b]]  # captions of images a..b-1
        best_b, first_b = best[a:b, None], first[a:b, None]
        for t0 in range(0, nt, text_chunk):
            t1 = min(t0 + text_chunk, nt)
            s = qi @ txt[t0:t1].T  # [ci, ct] scores, the only block in memory
            mine = block_pos[(block_pos >= t0) & (block_pos < t1)]  # captions whose image is in this block
            if len(mine):
                s[own[mine] - a, mine - t0] = pos[mine]
            # text -> image: images of this block ahead of each caption's own image
            own_t = own[t0:t1]
            t2i[t0:t1] += (s > torch.where(own_t >= b, pos_below[t0:t1], pos[t0:t1])).sum(0, dtype=torch.int32)
            if len(mine):  # int32 sums: a bool sum over dim 0 as int64 is ~10x slower
                cols = mine - t0
                _add_ties(t2i, mine, s[:, cols].T, pos[mine, None], torch.arange(a, b, device=img.device), own[mine, None])
            # image -> text: captions of this block ahead of each image's best caption
            thr = torch.where(first_b >= t1, best_below[a:b, None], best_b)
            i2t[a:b] += (s > thr).sum(1, dtype=torch.int32)
            rows = torch.nonzero((first_b[:, 0] >= t0) & (first_b[:, 0] < t1), as_tuple=True)[0]
            if len(rows):
                _add_ties(i2t, rows + a, s[rows], best_b[rows], torch.arange(t0, t1, device=img.device), first_b[rows])
    i2t[~has_caption] = 0
    return i2t.cpu().numpy(), t2i.cpu().numpy()


def _add_ties(out: torch.Tensor, queries: torch.Tensor, s: torch.Tensor, threshold: torch.Tensor, cand: torch.Tensor,
              positive: torch.Tensor) -> None:
    """``out[queries[q]] += #{j: s[q, j] == threshold[q] and cand[j] < positive[q]}``: the ties ahead of a
    positive whose index lies inside the block (the positive itself is not below its own index)."""
    out[queries] += ((s == threshold) & (cand[None, :] < positive)).sum(1)


def retrieval_metrics(image_emb, text_emb, text_image, ks: Sequence[int] = RECALL_KS, chunk: int = 256,
                      text_chunk: int = 8192, dtype: torch.dtype = torch.float32,
                      device: Optional[torch.device | str] = None) -> dict[str, float]:
    """Recall@K both ways and ranks (module doc): ``i2t_r{k}``, ``t2i_r{k}`` for k in ``ks``; ``mean_rank``,
    ``median_rank`` (both directions pooled), ``i2t_mean_rank``, ``i2t_median_rank``, ``t2i_mean_rank``,
    ``t2i_median_rank``; ``rsum``; ``num_images`` (i2t queries), ``num_texts``."""
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_image, chunk, text_chunk, dtype, device)
    i2t = i2t[i2t > 0]
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = float((ranks <= k).mean()) if len(ranks) else float("nan")
    both = np.concatenate([i2t, t2i]).astype(np.float64)
    nan = float("nan")
    out["mean_rank"] = float(both.mean()) if len(both) else nan
    out["median_rank"] = float(np.median(both)) if len(both) else nan
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_mean_rank"] = float(ranks.mean()) if len(ranks) else nan
        out[f"{name}_median_rank"] = float(np.median(ranks)) if len(ranks) else nan
    out["rsum"] = 100.0 * sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    out["num_images"], out["num_texts"] = float(len(i2t)), float(len(t2i))
    return out


# --- zero-shot classification ---------------------------------------------------------------------------


def class_prompts(template: str | Sequence[str], classes: Sequence[str]) -> list[str]:
    """Prompts for zero-shot classification: ``template.format(name)`` per class, names with ``_`` read as
    spaces ("warm_calm" -> "a photo of warm calm"). Several templates: class-major, len(classes) x len(templates)
    prompts (average their embeddings with ``mean_prompt_embeddings``)."""
    templates = [template] if isinstance(template, str) else list(template)
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"zero-shot prompt template {t!r} has no '{{}}' for the class name")
    return [t.format(str(c).replace("_", " ")) for c in classes for t in templates]


def mean_prompt_embeddings(emb, n_templates: int) -> torch.Tensor:
    """[C * T, D] embeddings of ``class_prompts`` with T templates -> [C, D]: mean per class, L2-normalised."""
    e = torch.as_tensor(np.asarray(emb) if not isinstance(emb, torch.Tensor) else emb).float()
    e = torch.nn.functional.normalize(e, dim=-1).reshape(-1, n_templates, e.shape[-1]).mean(1)
    return torch.nn.functional.normalize(e, dim=-1)


@torch.no_grad()
def zero_shot_metrics(image_emb, class_emb, labels, classes: Optional[Sequence[str]] = None,
                      logit_scale: float = 100.0, topk: int = 3, chunk: int = 65536) -> dict:
    """Classify each image by its best-scoring class embedding (``image_emb`` [N, D] @ ``class_emb`` [C, D]);
    ``classification_metrics`` of softmax(logit_scale x scores): ``top1``, ``top{topk}``, ``f1_macro``,
    ``auc_macro`` (``logit_scale`` only moves AUC: CLIP's 100 by default), per-class figures, confusion matrix."""
    from engine.training.metrics import classification_metrics

    cls = _as_tensor(class_emb, torch.float32, None)
    probs = []
    for a in range(0, len(image_emb), chunk):  # [N, C] is small; blocks keep the float64 copy small too
        scores = _as_tensor(image_emb[a : a + chunk], torch.float32, cls.device) @ cls.T
        probs.append(torch.softmax(logit_scale * scores, dim=1).double().cpu().numpy())
    probs = np.concatenate(probs) if probs else np.zeros((0, cls.shape[0]))
    classes = list(classes) if classes is not None else [str(c) for c in range(cls.shape[0])]
    return classification_metrics(probs, np.asarray(labels, dtype=np.int64), classes, topk)
