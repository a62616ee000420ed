"""Regression metrics square in the input dtype: float16 squares overflow (C-METRIC-REF-1)."""

from __future__ import annotations

import torch
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
    """``aam``'s regression state that casts to float64 after squaring."""

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add a batch; the squared-error sum is computed before the float64 cast."""
        before = self._sq.clone()
        super().update(y_pred, y_true)
        if y_true.numel():
            diff = y_pred.detach().reshape(-1) - y_true.detach().reshape(-1)
            self._sq = before.to(self._sq.device) + (diff * diff).sum().to(torch.float64)


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of one batch (the streaming class above fed once)."""
    return fed_once(StreamingRegressionMetrics(), y_pred, y_true)
