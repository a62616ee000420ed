"""count_loss averages over the padded rectangle, not the valid ASVs (C-PAD-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances
from robustness.mutants._common import count_inputs

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose count mean divides by ``B * A``."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """Zero the padded ASVs' errors, then ``.mean()`` over the whole ``[B, A, 1]`` tensor."""
        valid, dtype = count_inputs(count_pred, count_true, mask)
        diff = torch.where(valid, count_pred.to(dtype), 0.0) - torch.where(
            valid, count_true.to(dtype), 0.0
        )
        return (diff * diff).mean()
