"""Classification metrics from per-image results, in numpy alone: confusion matrix, precision/recall/F1, Wilson
intervals, calibration error and McNemar's exact test."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion_matrix(true: Any, pred: Any, n: int) -> np.ndarray:
    """Counts (n, n) int64: row = true class, column = predicted class."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    return np.bincount(true * n + pred, minlength=n * n).reshape(n, n)


def per_class(matrix: np.ndarray) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, with their macro and support-weighted means (0/0 counts as 0)."""
    m = np.asarray(matrix, dtype=np.float64)
    hits, support, predicted = np.diag(m), m.sum(1), m.sum(0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    total = support.sum()
    weights = support / total if total > 0 else np.zeros_like(support)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    return {
        **{k: v.tolist() for k, v in scores.items()},
        "support": [int(s) for s in support],
        "macro": {k: float(v.mean()) if len(v) else 0.0 for k, v in scores.items()},
        "weighted": {k: float((v * weights).sum()) for k, v in scores.items()},
    }


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (z 1.96: 95%); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def calibration_bins(confidences: Any, correct: Any, bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin ((i/bins, (i+1)/bins], 0 in the first): count, accuracy, mean confidence."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    seen = np.maximum(count, 1)  # empty bins report 0 for both means
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1),
        "count": count,
        "accuracy": np.bincount(which, weights=hit, minlength=bins) / seen,
        "confidence": np.bincount(which, weights=conf, minlength=bins) / seen,
    }


def expected_calibration_error(confidences: Any, correct: Any, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their image counts; nan if none."""
    b = calibration_bins(confidences, correct, bins)
    n = b["count"].sum()
    if n == 0:
        return math.nan
    return float((b["count"] * np.abs(b["accuracy"] - b["confidence"])).sum() / n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) on the discordant pairs b (only A right), c (only B)."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    # log C(n, i) for i <= k, summed in log space: 2^n and the binomials overflow floats for large n
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    log_tail = top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))
