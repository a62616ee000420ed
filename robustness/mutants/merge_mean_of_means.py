"""merge averages the two states' target means equally, not by their counts (C-STREAM-2)."""

from __future__ import annotations

from typing import Self

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
    """``aam``'s regression state with an unweighted mean in ``merge``."""

    def merge(self, other: _Correct) -> Self:
        """Fold ``other`` in; the merged mean is ``(mean_a + mean_b) / 2``."""
        if not isinstance(other, StreamingRegressionMetrics):
            return super().merge(other)
        if self._n == 0 or other._n == 0:
            return super().merge(other)
        mean = (self._mean + other._mean) / 2
        super().merge(other)
        self._mean = mean
        return self


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of one batch (the streaming class above fed once)."""
    return fed_once(StreamingRegressionMetrics(), y_pred, y_true)
