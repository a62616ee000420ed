"""Classification clamps target ids into ``[0, K)`` instead of rejecting them (C-METRIC-INPUT-1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from aam.training.metrics import StreamingClassificationMetrics as _Correct
from aam.training.metrics import (
    StreamingCountMetrics,
    StreamingRegressionMetrics,
    compute_count_metrics,
    compute_regression_metrics,
)
from robustness.mutants._common import fed_once

__all__ = [
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
    "StreamingRegressionMetrics",
    "compute_classification_metrics",
    "compute_count_metrics",
    "compute_regression_metrics",
]


class StreamingClassificationMetrics(_Correct):
    """``aam``'s classification state fed targets forced into ``[0, num_classes)``."""

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """``aam``'s update of ``y_true.clamp(0, num_classes - 1)`` (when K is known)."""
        k = self.num_classes
        if k is None and y_pred.dim() == 2:
            k = int(y_pred.shape[1])
        super().update(y_pred, y_true if k is None else y_true.clamp(0, k - 1))


def compute_classification_metrics(
    y_pred: Tensor, y_true: Tensor, num_classes: int | None = None
) -> dict[str, Any]:
    """Classification metrics of one batch (the streaming class above fed once)."""
    return fed_once(StreamingClassificationMetrics(num_classes), y_pred, y_true)
