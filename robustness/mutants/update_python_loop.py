"""Streaming regression update folds one element at a time in a Python loop (C-STREAM-4)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from aam.training.metrics import (
    StreamingClassificationMetrics,
    StreamingCountMetrics,
    _flat_pair,
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
    """``aam``'s regression state updated element by element (Welford's textbook loop)."""

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add a batch with Welford's online update, one element at a time."""
        pred, true = _flat_pair(y_pred, y_true)
        n, mean, m2, abs_sum, sq_sum = 0, 0.0, 0.0, 0.0, 0.0
        for p, t in zip(pred.tolist(), true.tolist(), strict=True):
            n += 1
            delta = t - mean
            mean += delta / n
            m2 += delta * (t - mean)
            abs_sum += abs(p - t)
            sq_sum += (p - t) ** 2
        if n:
            as_tensor = partial(torch.tensor, dtype=torch.float64, device=true.device)
            self._combine(
                n,
                as_tensor(mean),
                as_tensor(m2),
                as_tensor(abs_sum),
                as_tensor(sq_sum),
                true.min(),
                true.max(),
            )


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of one batch (the streaming class above fed once)."""
    return fed_once(StreamingRegressionMetrics(), y_pred, y_true)
