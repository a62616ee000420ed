"""count_loss sums squared errors before dividing: the sum overflows a finite mean (C-FINITE-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances
from robustness.mutants._common import count_inputs

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss without the pre-scaled sum in the count term."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """Masked MSE as ``sum(d**2) / n`` in the compute dtype."""
        valid, dtype = count_inputs(count_pred, count_true, mask)
        diff = torch.where(valid, count_pred.to(dtype), 0.0) - torch.where(
            valid, count_true.to(dtype), 0.0
        )
        return (diff * diff).sum() / valid.sum().clamp(min=1)
