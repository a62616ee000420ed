"""The confusion matrix is filled ``[pred, true]``: precision and recall swap (C-METRIC-REF-1)."""

from __future__ import annotations

from typing import Any

import torch
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
    """``aam``'s classification state with the bincount index's operands swapped."""

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add a batch; the flat index is ``pred * K + true``."""
        pred_ids, true_ids, k = self._class_ids(y_pred, y_true)
        cm = self._grown(k, true_ids.device)
        size = cm.shape[0]
        if true_ids.numel():
            flat = torch.bincount(pred_ids * size + true_ids, minlength=size * size)
            cm = cm + flat.reshape(size, size)
        self._cm = cm


def compute_classification_metrics(
    y_pred: Tensor, y_true: Tensor, num_classes: int | None = None
) -> dict[str, Any]:
    """Classification metrics of one batch (the streaming class above fed once)."""
    return fed_once(StreamingClassificationMetrics(num_classes), y_pred, y_true)
