"""base_loss slices the prediction to the target's width (the historical fix) (C-SHAPE-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss with the remainder-batch "fix" ``base_pred[:, :base_true.shape[1]]``."""

    def compute_base_loss(
        self, base_pred: Tensor, base_true: Tensor, encoder_type: str = "unifrac"
    ) -> Tensor:
        """``aam``'s base loss of the prediction cut to as many columns as the target has."""
        return super().compute_base_loss(
            base_pred[:, : base_true.shape[1]], base_true, encoder_type
        )
