"""Streaming regression update has no early return for an empty batch (C-STREAM-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.metrics import (
    StreamingClassificationMetrics,
    StreamingCountMetrics,
    _flat_pair,
    compute_classification_metrics,
    compute_count_metrics,
)
from aam.training.metrics import StreamingRegressionMetrics as _Correct
from robustness.mutants._common import fed_once

__all__ = [
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
    "StreamingRegressionMetrics",
    "compute_classification_metrics",
    "compute_count_metrics",
    "compute_regression_metrics",
]


class StreamingRegressionMetrics(_Correct):
    """``aam``'s regression state that folds in empty batches too."""

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add a batch: its count, mean, M2, error sums and extremes."""
        pred, true = _flat_pair(y_pred, y_true)
        mean = true.mean()
        dev = true - mean
        diff = pred - true
        self._combine(
            true.numel(),
            mean,
            (dev * dev).sum(),
            diff.abs().sum(),
            (diff * diff).sum(),
            true.amin(),
            true.amax(),
        )


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of one batch (the streaming class above fed once)."""
    return fed_once(StreamingRegressionMetrics(), y_pred, y_true)
