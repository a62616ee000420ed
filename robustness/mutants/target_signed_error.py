"""Regression target_loss is the mean error, not squared: it goes negative (C-INVARIANT-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss with ``(pred - true).mean()`` as the MSE target term."""

    def compute_target_loss(
        self, target_pred: Tensor, target_true: Tensor, is_classifier: bool = False
    ) -> Tensor:
        """Regression with ``target_loss_type="mse"``: the mean of ``pred - true``."""
        if is_classifier or self.target_loss_type != "mse":
            return super().compute_target_loss(target_pred, target_true, is_classifier)
        if target_pred.shape != target_true.shape:
            raise ValueError(
                f"target_loss: target shape {tuple(target_true.shape)} does not match "
                f"target_prediction {tuple(target_pred.shape)}"
            )
        return (target_pred - target_true).mean()
