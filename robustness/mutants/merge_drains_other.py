"""Count merge moves the other state's sums and resets it, instead of copying (C-STREAM-2)."""

from __future__ import annotations

from typing import Self

from torch import Tensor

from aam.training.metrics import (
    StreamingClassificationMetrics,
    StreamingRegressionMetrics,
    compute_classification_metrics,
    compute_regression_metrics,
)
from aam.training.metrics import StreamingCountMetrics as _Correct
from robustness.mutants._common import fed_once

__all__ = [
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
    "StreamingRegressionMetrics",
    "compute_classification_metrics",
    "compute_count_metrics",
    "compute_regression_metrics",
]


class StreamingCountMetrics(_Correct):
    """``aam``'s count state whose ``merge`` hands the data over."""

    def merge(self, other: _Correct) -> Self:
        """Take ``other``'s counts and sums; ``other`` is left empty (moved from)."""
        super().merge(other)
        other.reset()
        return self


def compute_count_metrics(count_pred: Tensor, count_true: Tensor, mask: Tensor) -> dict[str, float]:
    """Masked MAE and MSE of one batch (the streaming class above fed once)."""
    return fed_once(StreamingCountMetrics(), count_pred, count_true, mask)
