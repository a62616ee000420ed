"""nuc_loss sanitises padded ids in place, so the caller's targets change (C-PURE-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss that overwrites padding ids before the gather."""

    def compute_nucleotide_loss(self, nuc_pred: Tensor, nuc_true: Tensor, mask: Tensor) -> Tensor:
        """``aam``'s nucleotide loss after ``nuc_true[mask == 0] = 0``."""
        nuc_true[mask == 0] = 0
        return super().compute_nucleotide_loss(nuc_pred, nuc_true, mask)
