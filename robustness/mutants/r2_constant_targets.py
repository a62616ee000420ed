"""R² = 1 - SSE / SST with no case for constant targets: x/0 (C-METRIC-EDGE-1)."""

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
    """``aam``'s regression state whose R² divides by the targets' M2 unguarded."""

    def compute(self) -> dict[str, float]:
        """``{"mae", "mse", "r2"}`` with ``r2 = 1 - SSE / M2`` as tensors."""
        result = super().compute()
        if self._n:
            result["r2"] = float(1.0 - self._sq / self._m2)
        return result


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of one batch (the streaming class above fed once)."""
    return fed_once(StreamingRegressionMetrics(), y_pred, y_true)
