"""count_loss reduces per sample and keeps a dimension: shape ``[1]``, not 0-dim (C-SCALAR-1)."""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances
from robustness.mutants._common import count_inputs

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose count term is summed per sample with ``keepdim=True``."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """Per-sample sums of squared errors, then their sum over the batch (keepdim)."""
        valid, dtype = count_inputs(count_pred, count_true, mask)
        diff = torch.where(valid, count_pred.to(dtype), 0.0) - torch.where(
            valid, count_true.to(dtype), 0.0
        )
        per_sample = (diff * diff).sum(dim=(1, 2))
        return per_sample.sum(dim=0, keepdim=True) / valid.sum().clamp(min=1)
