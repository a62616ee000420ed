"""Regression target_loss broadcasts ``[B, 1]`` against ``[B]`` to ``[B, B]`` (C-SHAPE-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose regression target term is the textbook squared error."""

    def compute_target_loss(
        self, target_pred: Tensor, target_true: Tensor, is_classifier: bool = False
    ) -> Tensor:
        """Regression MSE as ``((pred - true) ** 2).mean()``, with no shape check."""
        if is_classifier or self.target_loss_type != "mse":
            return super().compute_target_loss(target_pred, target_true, is_classifier)
        return ((target_pred - target_true) ** 2).mean()
