"""Streaming R² keeps Σy and Σy²: the variance cancels for targets near 1e8 (C-STREAM-3)."""

from __future__ import annotations

from typing import Self

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
    """``aam``'s regression state with the textbook one-pass variance for R²."""

    def reset(self) -> None:
        """Forget all data."""
        super().reset()
        self._sum = torch.zeros((), dtype=torch.float64)
        self._sum_sq = torch.zeros((), dtype=torch.float64)

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add a batch, also to the running Σy and Σy²."""
        super().update(y_pred, y_true)
        true = y_true.detach().reshape(-1).to(torch.float64)
        self._sum = self._sum + true.sum()
        self._sum_sq = self._sum_sq + (true * true).sum()

    def merge(self, other: _Correct) -> Self:
        """Fold ``other`` in; the sums add."""
        super().merge(other)
        if isinstance(other, StreamingRegressionMetrics):
            self._sum = self._sum + other._sum
            self._sum_sq = self._sum_sq + other._sum_sq
        return self

    def compute(self) -> dict[str, float]:
        """R² = 1 - SSE / (Σy² - n·mean²)."""
        result = super().compute()
        if self._n == 0 or self._lo == self._hi:
            return result
        mean = self._sum / self._n
        total = float(self._sum_sq - self._n * mean * mean)
        result["r2"] = 1.0 - float(self._sq) / total if total > 0 else 0.0
        return result


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of one batch (the streaming class above fed once)."""
    return fed_once(StreamingRegressionMetrics(), y_pred, y_true)
