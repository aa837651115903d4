"""Classification metrics from gathered probabilities (computed with scikit-learn where it has them)."""
from __future__ import annotations

import numpy as np


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str], topk: int = 3) -> dict:
    """top-1, top-k, macro one-vs-rest AUC and macro F1 (over the classes present in ``labels``), per-class
    precision/recall/F1 (all classes), confusion matrix."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

    n_classes = len(classes)
    pred = probs.argmax(1)
    k = min(topk, n_classes)
    topk_hit = (np.argsort(-probs, axis=1)[:, :k] == labels[:, None]).any(1)
    present = np.unique(labels)
    p = probs / probs.sum(1, keepdims=True)
    # Macro over the classes present in the evaluated labels: a class absent from a (small, or subset) split has
    # no AUC, and counting it as F1 = 0 would bias the macro F1 low. One-vs-rest per class, then the mean.
    auc = float(np.mean([roc_auc_score(labels == c, p[:, c]) for c in present])) if len(present) > 1 else float("nan")
    all_labels = np.arange(n_classes)
    prec, rec, f1, support = precision_recall_fscore_support(labels, pred, labels=all_labels, zero_division=0)
    return {
        "top1": float((pred == labels).mean()),
        f"top{topk}": float(topk_hit.mean()),
        "auc_macro": auc,
        "f1_macro": float(f1_score(labels, pred, labels=present, average="macro", zero_division=0)),
        "classes_evaluated": int(len(present)),  # the macro averages run over these
        "per_class": {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(labels, pred, labels=all_labels).tolist(),
        "num_samples": int(len(labels)),
    }


CLASSIFICATION_METRICS = ("loss", "top1", "auc_macro", "f1_macro")  # + top{eval.topk}
RETRIEVAL_METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_rank", "median_rank")


def expected_eval_metrics(cfg, split: str = "val") -> list[str]:
    """The scalar metrics an evaluation of ``split`` logs for this config: what ``eval.metric`` may name.

    The one list, checked when the config loads (a typo fails then, not after an epoch); a new objective
    adds its names here.
    """
    if getattr(cfg.model, "task", "classification") == "retrieval":
        names = [*RETRIEVAL_METRICS, "rsum", "i2t_mean_rank", "i2t_median_rank", "t2i_mean_rank", "t2i_median_rank"]
        if cfg.eval.zero_shot_prompt:
            names += ["zeroshot_top1", f"zeroshot_top{cfg.eval.topk}", "zeroshot_auc_macro", "zeroshot_f1_macro"]
    else:
        names = [*CLASSIFICATION_METRICS[:2], f"top{cfg.eval.topk}", *CLASSIFICATION_METRICS[2:]]
    return [f"{split}_{n}" for n in dict.fromkeys(names)]
