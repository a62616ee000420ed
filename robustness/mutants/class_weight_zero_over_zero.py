"""Class-weighted NLL is ``sum(w[y] nll) / sum(w[y])``: 0/0 for zero weights (C-WEIGHT-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss with the textbook weighted mean and no guard."""

    def compute_target_loss(
        self, target_pred: Tensor, target_true: Tensor, is_classifier: bool = False
    ) -> Tensor:
        """Classification with class weights: ``sum(w[y] * nll) / sum(w[y])``."""
        weights = self.class_weights
        if not is_classifier or weights is None or weights.shape[0] != target_pred.shape[-1]:
            return super().compute_target_loss(target_pred, target_true, is_classifier)
        ids = target_true.long()
        nll = -target_pred.float().gather(1, ids.unsqueeze(1)).squeeze(1)
        selected = weights.to(nll)[ids]
        return (selected * nll).sum() / selected.sum()
