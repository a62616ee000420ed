"""Without num_classes, classification keeps every batch to infer K (C-STREAM-4)."""

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
    """``aam``'s classification state that also keeps its batches when K is not given."""

    def reset(self) -> None:
        """``aam``'s reset, and forget the kept batches."""
        super().reset()
        self._kept: list[tuple[Tensor, Tensor]] = []

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """``aam``'s update; without ``num_classes`` the batch is kept too ("to infer K")."""
        super().update(y_pred, y_true)
        if self.num_classes is None:
            self._kept.append((y_pred.detach().clone(), y_true.detach().clone()))


def compute_classification_metrics(
    y_pred: Tensor, y_true: Tensor, num_classes: int | None = None
) -> dict[str, Any]:
    """Classification metrics of one batch (the streaming class above fed once)."""
    return fed_once(StreamingClassificationMetrics(num_classes), y_pred, y_true)
