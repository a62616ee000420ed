"""unifrac base_loss divides by ``B * (B - 1)`` pairs: 0/0 = NaN at B = 1 (C-RAGGED-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose pairwise base mean counts pairs without a guard."""

    def compute_base_loss(
        self, base_pred: Tensor, base_true: Tensor, encoder_type: str = "unifrac"
    ) -> Tensor:
        """Off-diagonal MSE as the sum of squared errors over ``B * (B - 1)``."""
        if encoder_type != "unifrac" or base_pred.shape != base_true.shape:
            return super().compute_base_loss(base_pred, base_true, encoder_type)
        size = base_pred.shape[0]
        off_diagonal = ~torch.eye(size, dtype=torch.bool, device=base_pred.device)
        diff = torch.where(off_diagonal, base_pred, 0.0) - torch.where(
            off_diagonal, base_true.to(base_pred.dtype), 0.0
        )
        return (diff * diff).sum() / (size * (size - 1))
