"""count_loss squares in the input dtype: float16 differences above 256 overflow (C-DTYPE-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances
from robustness.mutants._common import count_inputs

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss that casts the count mean to float32 only at the end."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """Masked MSE computed in the prediction's dtype, returned as float32 for halves."""
        valid, _ = count_inputs(count_pred, count_true, mask)
        diff = torch.where(valid, count_pred, 0.0) - torch.where(
            valid, count_true.to(count_pred.dtype), 0.0
        )
        mean = (diff * diff).sum() / valid.sum().clamp(min=1)
        return mean.float() if mean.dtype in (torch.float16, torch.bfloat16) else mean
