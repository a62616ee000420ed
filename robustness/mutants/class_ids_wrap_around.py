"""Classification never checks ids; ``index_put_`` wraps -1 to the last class (C-METRIC-INPUT-1)."""

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
    """``aam``'s classification state filled by indexing, without id validation."""

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add one to ``confusion[true, pred]`` for every sample."""
        pred = y_pred.argmax(dim=1) if y_pred.dim() == 2 else y_pred.long()
        true = y_true.long()
        if pred.shape != true.shape:
            raise ValueError(f"y_pred has {pred.numel()} samples but y_true has {true.numel()}")
        if true.numel() == 0:
            return
        k = self.num_classes
        if k is None:
            k = max(int(torch.cat([pred, true]).max()) + 1, self._cm.shape[0])
            if y_pred.dim() == 2:
                k = max(k, y_pred.shape[1])
        cm = self._grown(k, true.device).clone()
        cm.index_put_((true, pred), torch.ones_like(true), accumulate=True)
        self._cm = cm


def compute_classification_metrics(
    y_pred: Tensor, y_true: Tensor, num_classes: int | None = None
) -> dict[str, Any]:
    """Classification metrics of one batch (the streaming class above fed once)."""
    return fed_once(StreamingClassificationMetrics(num_classes), y_pred, y_true)
