"""count_loss selects with ``torch.where`` after squaring: clean value, NaN gradient (C-MASK-2)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances
from robustness.mutants._common import count_inputs

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss with a single ``where`` around the squared error."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """Masked MSE: square every ASV, then keep the valid ones with ``torch.where``."""
        valid, dtype = count_inputs(count_pred, count_true, mask)
        squares = (count_pred.to(dtype) - count_true.to(dtype)) ** 2
        return torch.where(valid, squares, 0.0).sum() / valid.sum().clamp(min=1)
