"""Streaming count metrics keep every batch: memory grows with the data (C-STREAM-4)."""

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
    """``aam``'s count state that stores the batches and reduces them in ``compute``."""

    def reset(self) -> None:
        """Forget all data."""
        super().reset()
        self._batches: list[tuple[Tensor, Tensor, Tensor]] = []

    def update(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> None:
        """Keep a copy of the batch."""
        self._batches.append((count_pred.clone(), count_true.clone(), mask.clone()))

    def merge(self, other: _Correct) -> Self:
        """Take a copy of ``other``'s batches."""
        if isinstance(other, StreamingCountMetrics):
            self._batches.extend(other._batches)
        return self

    def compute(self) -> dict[str, float]:
        """Reduce every stored batch."""
        state = _Correct()
        for batch in self._batches:
            state.update(*batch)
        return state.compute()


def compute_count_metrics(count_pred: Tensor, count_true: Tensor, mask: Tensor) -> dict[str, float]:
    """Masked MAE and MSE of one batch (the streaming class above fed once)."""
    return fed_once(StreamingCountMetrics(), count_pred, count_true, mask)
