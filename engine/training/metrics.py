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
        "per_class": {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(labels, pred, labels=all_labels).tolist(),
        "num_samples": int(len(labels)),
    }
