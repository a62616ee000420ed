"""nuc_loss clamps nucleotide ids into ``[0, V)`` instead of rejecting them (C-INPUT-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss that forces every nucleotide id into range."""

    def compute_nucleotide_loss(self, nuc_pred: Tensor, nuc_true: Tensor, mask: Tensor) -> Tensor:
        """``aam``'s nucleotide loss of ``nuc_true.clamp(0, V - 1)``."""
        vocab = nuc_pred.shape[-1]
        return super().compute_nucleotide_loss(nuc_pred, nuc_true.clamp(0, vocab - 1), mask)
