"""Classification metrics, numpy only (no scikit-learn at run time).

Definitions follow the study adaptd grows out of (and scikit-learn's ``average="macro"``):
for each class c among those that occur in the labels or the predictions,
precision_c = (predicted c and truly c) / (predicted c), recall_c = (predicted c and truly c) /
(truly c), F1_c = 2 P R / (P + R); a ratio with a zero denominator counts as 0. The macro value
is the unweighted mean over those classes. Accuracy is the share of exact top-1 matches.
Pure functions; thread-safe.
"""

from __future__ import annotations

import numpy as np

from .manifest import Metrics


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Metrics:
    """Top-1 accuracy and macro precision/recall/F1 of integer predictions ``y_pred``."""
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels and predictions differ in length: {y_true.size} vs {y_pred.size}")
    n = int(y_true.size)
    if n == 0:
        raise ValueError("no samples to score")
    classes = np.union1d(y_true, y_pred)
    precision, recall, f1 = [], [], []
    for c in classes:
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        predicted = float(np.sum(y_pred == c))
        actual = float(np.sum(y_true == c))
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if (p + r) else 0.0)
    return Metrics(
        accuracy=float(np.mean(y_true == y_pred)),
        precision_macro=float(np.mean(precision)),
        recall_macro=float(np.mean(recall)),
        f1_macro=float(np.mean(f1)),
        n=n,
    )
