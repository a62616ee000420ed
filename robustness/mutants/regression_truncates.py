"""Regression metrics cut predictions and targets to the shorter length (C-METRIC-INPUT-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.metrics import (
    StreamingClassificationMetrics,
    StreamingCountMetrics,
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
    """``aam``'s regression state that zips inputs of different lengths."""

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add the first ``min(len(y_pred), len(y_true))`` pairs."""
        pred, true = y_pred.reshape(-1), y_true.reshape(-1)
        n = min(pred.numel(), true.numel())
        super().update(pred[:n], true[:n])


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of one batch (the streaming class above fed once)."""
    return fed_once(StreamingRegressionMetrics(), y_pred, y_true)
