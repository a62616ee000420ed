"""count_loss returns a fresh constant for an all-padding batch, cut from the graph (C-EMPTY-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss with an early return for a batch without valid ASVs."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """``aam``'s count loss, short-circuited to ``torch.tensor(0.0)`` when nothing is valid."""
        if not bool((mask != 0).any()):
            return torch.tensor(0.0, device=count_pred.device)
        return super().compute_count_loss(count_pred, count_true, mask)
