"""Every loss term of a run, in one place and under one set of rules, all computed in fp32.

    classification_loss   cross-entropy or focal loss; label smoothing and class weights (train.*), hard or soft
                          (mixup/cutmix) targets
    auxiliary_losses      the fusion model's per-modality heads (the same rules as the main head) and its
                          image-text contrastive term, each weighted by its model.* weight
    distillation_loss     KL to a teacher run's probabilities at a temperature (train.distill_*)
    info_nce / sigmoid_loss / contrastive_loss
                          CLIP's symmetric InfoNCE, SigLIP's sigmoid loss, hard negatives and queued negatives
    retrieval_loss        a dual encoder's objective: its contrastive loss with the queue, which it then fills
    training_loss         what a training step minimises: the sum of the terms a config asks for, named for logging

Distributed, the contrastive negatives are the global batch (``engine.models.contrastive.gather_with_grad``);
every rank computes the loss of its own rows, scaled so that the rank-averaged gradients (what DeepSpeed
applies) equal those of the loss over the global batch, also with unequal batch sizes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from engine.config import Config
from engine.models.contrastive import gather_detached, gather_with_grad


def training_loss(model, out, targets: torch.Tensor, cfg: Config, class_weights: Optional[torch.Tensor] = None,
                  teacher_probs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, parts): the terms ``cfg`` (a stage's config, with its overrides) asks for; ``parts`` names each."""
    if cfg.model.task == "retrieval":  # a dual encoder: contrastive loss with its queue, no labels
        parts = {"contrastive": retrieval_loss(model, out, cfg)}
        return parts["contrastive"], parts
    if class_weights is not None:
        class_weights = class_weights.to(out.logits.device)
    parts = {"cls": classification_loss(out.logits, targets, cfg, class_weights)}
    if teacher_probs is not None:  # train.distill_from: soft targets of a finished run
        parts = add_distillation(parts, out.logits, teacher_probs, cfg)
    parts.update(auxiliary_losses(out, targets, cfg, class_weights))
    return sum(parts.values()), parts


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: Config,
                        class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Loss in fp32 whatever the model's precision; targets are indices or soft labels [B, C]."""
    logits = logits.float()
    smoothing = cfg.train.label_smoothing
    if cfg.train.loss == "focal":
        logp = F.log_softmax(logits, dim=1)
        soft = _smoothed(targets if targets.ndim == 2 else F.one_hot(targets, logits.shape[1]).float(), smoothing)
        # clamped: d/dp (1-p)^gamma is infinite at p = 1 for gamma < 1, which turned a finite loss into NaN gradients
        focal = (1 - logp.exp()).clamp_min(1e-12) ** cfg.train.focal_gamma
        per_class = -(soft * focal * logp)
        if class_weights is not None:
            per_class = per_class * class_weights
        return per_class.sum(1).mean()
    if targets.ndim == 2 and class_weights is not None:
        # PyTorch normalises weighted CE by the targets' total weight for class indices but takes a plain mean for
        # soft targets, so turning on mixup would rescale the loss by a data-dependent factor. Normalise both alike.
        weighted = _smoothed(targets, smoothing) * class_weights
        return -(weighted * F.log_softmax(logits, dim=1)).sum() / weighted.sum()
    return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=smoothing)


def _smoothed(soft: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Soft targets [B, C] with label smoothing, PyTorch's definition: (1 - e) * t + e / C."""
    return soft * (1 - smoothing) + smoothing / soft.shape[1] if smoothing else soft


def auxiliary_losses(out, targets: torch.Tensor, cfg: Config,
                     class_weights: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """A fusion model's extra terms, already weighted; empty when both weights are 0 (or the model has no such heads).

    ``aux_<modality>``: each auxiliary head's classification loss x model.aux_loss_weight (each, not averaged),
    with the main head's rules (label smoothing, class weights, focal loss);
    ``contrastive``: image-text contrastive loss (model.contrastive_loss, hard_negatives) x model.contrastive_weight.
    """
    losses = {}
    if cfg.model.aux_loss_weight > 0 and getattr(out, "aux_logits", None):
        for m, logits in out.aux_logits.items():
            losses[f"aux_{m}"] = cfg.model.aux_loss_weight * classification_loss(logits, targets, cfg, class_weights)
    if cfg.model.contrastive_weight > 0 and getattr(out, "embeddings", None):
        losses["contrastive"] = cfg.model.contrastive_weight * contrastive_loss(
            out.embeddings["image"], out.embeddings["text"], out.logit_scale, out.logit_bias, cfg.model)
    return losses


def retrieval_loss(model, out, cfg: Config) -> torch.Tensor:
    """A dual encoder's loss (model.contrastive_loss / hard_negatives, read now: a stage may change them) with the
    queue's negatives; in training the global batch is then queued (``out.queued_*``, the momentum towers' when
    model.momentum is set)."""
    queue_image = queue_text = None
    if hasattr(model, "queue"):
        queue_image, queue_text = model.queue.negatives()
    loss = contrastive_loss(out.image_emb, out.text_emb, out.logit_scale, out.logit_bias, cfg.model,
                            queue_image, queue_text)
    if out.queued_image is not None:
        model.queue.enqueue(gather_detached(out.queued_image), gather_detached(out.queued_text))
    return loss.float()


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(log p_teacher / T) || softmax(logits / T)), batch mean, fp32."""
    t = temperature
    soft = F.softmax(torch.log(teacher_probs.to(logits.device).float().clamp_min(1e-12)) / t, dim=1)
    return F.kl_div(F.log_softmax(logits.float() / t, dim=1), soft, reduction="batchmean") * t * t


def add_distillation(parts: dict[str, torch.Tensor], logits: torch.Tensor, teacher_probs: torch.Tensor,
                     cfg) -> dict[str, torch.Tensor]:
    """``parts`` with the classification term scaled by (1 - alpha) and an alpha-weighted ``distill`` term."""
    alpha = cfg.train.distill_alpha
    return {**parts, "cls": parts["cls"] * (1 - alpha),
            "distill": alpha * distillation_loss(logits, teacher_probs, cfg.train.distill_temperature)}


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
             queue_image: Optional[torch.Tensor] = None, queue_text: Optional[torch.Tensor] = None,
             hard_negatives: str = "none", beta: float = 1.0, tau_plus: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows (in-batch negatives, global batch when distributed), in fp32.

    ``image`` and ``text`` are L2-normalised [B, D]; the loss is about log(global B) for unrelated
    embeddings and goes to zero when each image is closest to its own text. ``queue_text`` / ``queue_image``
    [K, D] add negatives: image->text logits run over [batch texts; queued texts], text->image likewise.
    ``hard_negatives``: "none", "weighted" (Robinson et al. 2021, ``beta``/``tau_plus``; beta = tau_plus = 0 is
    plain InfoNCE) or "semihard" (per row, the most similar negative less similar than the positive; the least
    similar negative when there is none, as TensorFlow's semi-hard triplet loss). Distributed, this rank's rows'
    sum is scaled by world / global B: averaged over ranks, that is the global batch's mean.
    """
    all_image, offset, world = gather_with_grad(image)
    all_text, _, _ = gather_with_grad(text)
    targets = torch.arange(image.shape[0], device=image.device) + offset
    scale = logit_scale.float()
    total = 0.0
    for rows, columns, queue in ((image, all_text, queue_text), (text, all_image, queue_image)):
        if queue is not None and queue.shape[0]:
            columns = torch.cat([columns, queue.to(columns.dtype)])
        logits = scale * (rows.float() @ columns.float().T)
        total = total + _row_losses(logits, targets, scale, hard_negatives, beta, tau_plus).sum()
    return total * (world / all_image.shape[0]) / 2


def _row_losses(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, hard_negatives: str,
                beta: float, tau_plus: float) -> torch.Tensor:
    """Per-row loss [b] of logits [b, N] whose positive sits in column ``targets``."""
    if hard_negatives == "none":
        return F.cross_entropy(logits, targets, reduction="none")
    positive = logits.gather(1, targets[:, None]).squeeze(1)
    is_positive = F.one_hot(targets, logits.shape[1]).bool()
    if hard_negatives == "semihard":
        with torch.no_grad():
            candidates = (logits < positive[:, None]) & ~is_positive
            hardest = logits.masked_fill(~candidates, -math.inf).argmax(1)
            easiest = logits.masked_fill(is_positive, math.inf).argmin(1)
            chosen = torch.where(candidates.any(1), hardest, easiest)
        return F.softplus(logits.gather(1, chosen[:, None]).squeeze(1) - positive)
    if hard_negatives != "weighted":
        raise ValueError(f"model.hard_negatives={hard_negatives!r} is not one of ['none', 'weighted', 'semihard']")
    # Robinson et al. 2021, eq. of their code, in log space (exp(logit) overflows at scale 100):
    # imp = exp(beta * l) / mean(exp(beta * l)); Ng = (sum(imp * exp(l)) - tau_plus * n * exp(l+)) / (1 - tau_plus),
    # clamped below at n * exp(-scale) (every negative at cosine -1); loss = -log(exp(l+) / (exp(l+) + Ng)).
    n = logits.shape[1] - 1
    negatives = logits.masked_fill(is_positive, -math.inf)
    log_weights = F.log_softmax((beta * logits).masked_fill(is_positive, -math.inf), dim=1) + math.log(n)  # mean(imp) = 1
    log_reweighted = torch.logsumexp(log_weights + negatives, dim=1)
    floor = math.log(n) - scale
    if tau_plus:
        log_debias = math.log(tau_plus * n) + positive
        gap = (log_debias - log_reweighted).clamp(max=-1e-6)  # keeps the unused branch finite (no NaN gradients)
        log_ng = torch.where(log_debias - log_reweighted < -1e-6,
                             log_reweighted + torch.log1p(-gap.exp()) - math.log(1 - tau_plus),
                             torch.full_like(positive, -math.inf))
    else:
        log_ng = log_reweighted
    log_ng = torch.maximum(log_ng, floor.expand_as(log_ng))
    return torch.logaddexp(positive, log_ng) - positive


def sigmoid_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                 queue_image: Optional[torch.Tensor] = None, queue_text: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), in fp32: -1/|B| sum_ij log sigmoid(z_ij (t x_i.y_j + b)),
    z = 1 for matching pairs, -1 otherwise, over the global batch when distributed.

    Each rank takes the pairs of its own images with every rank's texts (each pair once over the ranks), scaled
    by world / global B, so the rank average is the global batch's loss, gradients included. Queued embeddings
    [K, D] are negatives of every image (``queue_text``) and of every text (``queue_image``).
    """
    all_text, offset, world = gather_with_grad(text)
    scale, bias = logit_scale.float(), logit_bias.float()
    logits = scale * (image.float() @ all_text.float().T) + bias
    signs = -torch.ones_like(logits)
    signs[torch.arange(image.shape[0], device=image.device), torch.arange(image.shape[0], device=image.device) + offset] = 1
    total = -F.logsigmoid(signs * logits).sum()
    for rows, queue in ((image, queue_text), (text, queue_image)):
        if queue is not None and queue.shape[0]:
            total = total - F.logsigmoid(-(scale * (rows.float() @ queue.float().T) + bias)).sum()
    return total * (world / all_text.shape[0])


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: Optional[torch.Tensor], cfg, queue_image: Optional[torch.Tensor] = None,
                     queue_text: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loss ``cfg`` (a ModelConfig) asks for, its keys read now: a training stage may have changed them."""
    cfg.check_hard_negatives()
    if cfg.contrastive_loss == "sigmoid":
        return sigmoid_loss(image, text, logit_scale, logit_bias, queue_image, queue_text)
    return info_nce(image, text, logit_scale, queue_image, queue_text, cfg.hard_negatives,
                    cfg.hard_negative_beta, cfg.hard_negative_tau_plus)
