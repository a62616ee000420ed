"""Count metrics mask by multiplication: NaN/inf at padded ASVs poison the sums (C-METRIC-REF-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.metrics import (
    StreamingClassificationMetrics,
    StreamingRegressionMetrics,
    _count_inputs,
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
    """``aam``'s count state with ``(pred - true) * mask`` as the masked difference."""

    def update(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> None:
        """Add a batch; padded differences are multiplied by 0."""
        pred, true, valid = _count_inputs(count_pred, count_true, mask)
        diff = (pred - true) * valid.to(pred.dtype)
        self._n = self._n + valid.sum(dtype=torch.int64)
        self._abs = self._abs + diff.abs().sum()
        self._sq = self._sq + (diff * diff).sum()


def compute_count_metrics(count_pred: Tensor, count_true: Tensor, mask: Tensor) -> dict[str, float]:
    """Masked MAE and MSE of one batch (the streaming class above fed once)."""
    return fed_once(StreamingCountMetrics(), count_pred, count_true, mask)
