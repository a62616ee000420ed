"""count_loss runs ``nan_to_num`` on the prediction: NaN/inf go unreported (C-NONFINITE-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss that "cleans" the count prediction before checking it."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """``aam``'s count loss of ``torch.nan_to_num(count_pred)``."""
        return super().compute_count_loss(torch.nan_to_num(count_pred), count_true, mask)
