"""count_loss reads ``count_pred.detach()``: the count head never learns (C-PURE-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss that detaches the count prediction (copied from logging code)."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """``aam``'s count loss of ``count_pred.detach()``."""
        return super().compute_count_loss(count_pred.detach(), count_true, mask)
