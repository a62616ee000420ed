"""Float64 NumPy references for the metrics (the oracles of C-METRIC-REF-1 and C-STREAM-*).

Written for clarity, not speed: sums use :func:`math.fsum` (correctly rounded) and the variance
is a corrected two-pass computation, so the reference is accurate to a few ulps even for
``1e8 + noise`` targets. Conventions follow scikit-learn's (``r2_score`` with
``force_finite=True``; weighted precision/recall/F1 with ``zero_division=0``), plus the contract's
choices for inputs scikit-learn rejects: no data gives 0.0 everywhere, and constant targets
(a single sample included) give R² = 1.0 when the predictions are perfect, else 0.0.

scikit-learn is *not* imported here; it is the test-only oracle these references are checked
against in ``tests/robustness``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "r2_condition",
    "reference_classification_metrics",
    "reference_confusion_matrix",
    "reference_count_metrics",
    "reference_r2",
    "reference_regression_metrics",
]


def _float64(x: Any) -> np.ndarray:
    """Flatten a tensor or array-like to float64 NumPy (exact for every float dtype)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).reshape(-1).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _int64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.int64).reshape(-1).numpy()
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _mean(x: np.ndarray) -> float:
    """Mean with one correction pass (exact to rounding for any offset)."""
    mean = math.fsum(x) / x.size
    return mean + math.fsum(x - mean) / x.size


def _pair(y_pred: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, true = _float64(y_pred), _float64(y_true)
    if pred.size != true.size:
        raise ValueError(
            f"reference: y_pred has {pred.size} elements but y_true has {true.size}; "
            "they must flatten to the same length"
        )
    return pred, true


def _scaled_deviations(true: np.ndarray) -> tuple[np.ndarray, int]:
    """Deviations from the mean scaled by a power of two (exact) to at most 1 in magnitude.

    Scaling keeps the squares of tiny deviations from underflowing to 0, which would make
    non-constant targets look constant.
    """
    dev = true - _mean(true)
    exponent = math.frexp(float(np.max(np.abs(dev))))[1]
    return np.ldexp(dev, -exponent), exponent


def _constant(true: np.ndarray) -> bool:
    # Decided on the values, not on a computed variance: the mean of [0.1] * 3 is not exactly
    # 0.1 in floating point, and a rounding residue must not count as variance.
    return bool(np.all(true == true[0]))


def reference_r2(y_pred: Any, y_true: Any) -> float:
    """R² of flattened inputs; constant targets give 1.0 if perfect else 0.0; no data gives 0.0.

    Raises:
        ValueError: if the inputs flatten to different lengths.
    """
    pred, true = _pair(y_pred, y_true)
    if true.size == 0:
        return 0.0
    if _constant(true):
        return 1.0 if np.all(pred == true) else 0.0
    dev, exponent = _scaled_deviations(true)
    ss_tot = math.fsum(dev**2)
    ss_res = math.fsum(np.ldexp(pred - true, -exponent) ** 2)
    return 1.0 - ss_res / ss_tot


def r2_condition(y_true: Any) -> float:
    """Condition number ``sqrt(sum(y²) / sum((y - mean)²))`` of the targets' variance.

    A stable (Welford/Chan) variance has relative error about ``n · eps · condition``; the
    contract's tolerance for R² scales with it. Constant or empty targets give 1.0 (R² then has
    an exact documented value and no cancellation).
    """
    true = _float64(y_true)
    if true.size == 0 or _constant(true):
        return 1.0
    dev, exponent = _scaled_deviations(true)
    return math.sqrt(math.fsum(np.ldexp(true, -exponent) ** 2) / math.fsum(dev**2))


def reference_regression_metrics(y_pred: Any, y_true: Any) -> dict[str, float]:
    """``{"mae", "mse", "r2"}`` of flattened inputs in float64; no data gives zeros.

    Raises:
        ValueError: if the inputs flatten to different lengths.
    """
    pred, true = _pair(y_pred, y_true)
    if true.size == 0:
        return {"mae": 0.0, "mse": 0.0, "r2": 0.0}
    diff = pred - true
    return {
        "mae": math.fsum(np.abs(diff)) / diff.size,
        "mse": math.fsum(diff**2) / diff.size,
        "r2": reference_r2(pred, true),
    }


def reference_confusion_matrix(pred_ids: Any, true_ids: Any, num_classes: int) -> np.ndarray:
    """``[K, K]`` int64 counts, rows true, columns predicted.

    Raises:
        ValueError: for lengths that differ or ids outside ``[0, num_classes)``.
    """
    pred, true = _int64(pred_ids), _int64(true_ids)
    if pred.size != true.size:
        raise ValueError(f"reference: {pred.size} predictions but {true.size} targets")
    for name, ids in (("pred", pred), ("true", true)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"reference: {name} ids outside [0, {num_classes}): {ids.tolist()}")
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def reference_classification_metrics(
    y_pred: Any, y_true: Any, num_classes: int | None = None
) -> dict[str, Any]:
    """Accuracy, weighted precision/recall/F1 (zero_division 0) and the confusion matrix.

    ``y_pred`` is ``[B, K]`` scores (argmax, first maximum) or ``[B]`` ids. The number of classes
    is ``num_classes``, else ``K`` for ``[B, K]`` predictions, else the largest id + 1. No data
    gives 0.0 for every ratio. ``confusion_matrix`` is an int64 NumPy array.

    Raises:
        ValueError: for lengths that differ or ids outside ``[0, K)``.
    """
    scores = y_pred.detach().cpu() if isinstance(y_pred, torch.Tensor) else np.asarray(y_pred)
    true = _int64(y_true)
    if scores.ndim == 2:
        pred = _int64(np.argmax(_float64(scores).reshape(scores.shape), axis=1))
        k = int(scores.shape[1]) if num_classes is None else num_classes
    else:
        pred = _int64(scores)
        seen = np.concatenate([pred, true])
        k = num_classes if num_classes is not None else int(seen.max()) + 1 if seen.size else 0
    cm = reference_confusion_matrix(pred, true, k)
    n = int(true.size)
    if n == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "confusion_matrix": cm}
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        return out

    precision = ratio(tp, predicted)
    recall = ratio(tp, support)
    f1 = ratio(2.0 * tp, support + predicted)
    return {
        "accuracy": float(tp.sum()) / n,
        "precision": math.fsum(precision * support) / n,
        "recall": math.fsum(recall * support) / n,
        "f1": math.fsum(f1 * support) / n,
        "confusion_matrix": cm,
    }


def reference_count_metrics(count_pred: Any, count_true: Any, mask: Any) -> dict[str, float]:
    """``{"mae", "mse"}`` over valid positions (``mask != 0``); none valid gives zeros.

    ``count_pred``/``count_true`` are ``[B, A, 1]``, ``mask`` ``[B, A]``; padded positions may
    hold anything (they are never read).

    Raises:
        ValueError: if the shapes do not fit together.
    """
    pred, true, valid = _float64(count_pred), _float64(count_true), _float64(mask) != 0
    if not (pred.size == true.size == valid.size):
        raise ValueError(
            f"reference: {pred.size} predictions, {true.size} targets, {valid.size} mask entries"
        )
    diff = pred[valid] - true[valid]
    if diff.size == 0:
        return {"mae": 0.0, "mse": 0.0}
    return {"mae": math.fsum(np.abs(diff)) / diff.size, "mse": math.fsum(diff**2) / diff.size}
