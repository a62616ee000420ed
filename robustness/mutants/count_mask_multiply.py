"""count_loss masks by multiplication: ``NaN * 0`` is NaN, so padding garbage leaks (C-MASK-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances
from robustness.mutants._common import count_inputs

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss with a multiplicative count mask."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """Masked MSE as ``sum((pred - true)**2 * mask) / sum(mask)``."""
        valid, dtype = count_inputs(count_pred, count_true, mask)
        weight = valid.to(dtype)
        squares = (count_pred.to(dtype) - count_true.to(dtype)) ** 2
        return (squares * weight).sum() / weight.sum().clamp(min=1)
