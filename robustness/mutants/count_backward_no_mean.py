"""A fused count MSE whose hand-written backward forgets the ``1 / n`` (C-GRAD-1).

The value is ``aam``'s exactly; only the custom :class:`torch.autograd.Function`'s backward
is wrong, returning ``2 (p - t)`` instead of ``2 (p - t) / n``: every value rule passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances
from robustness.mutants._common import count_inputs

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class _FusedCountMse(torch.autograd.Function):
    """Forward: the given (correct) value; backward: ``2 (p - t)`` at valid ASVs."""

    @staticmethod
    def forward(
        ctx: Any, pred: Tensor, true: Tensor, valid: Tensor, value: Tensor, dtype: torch.dtype
    ) -> Tensor:
        ctx.save_for_backward(pred, true, valid)
        ctx.dtype = dtype
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        pred, true, valid = ctx.saved_tensors
        diff = torch.where(valid, pred.to(ctx.dtype) - true.to(ctx.dtype), 0.0)
        return (2.0 * diff * grad).to(pred.dtype), None, None, None, None


class MultiTaskLoss(_Correct):
    """``aam``'s loss with a fused count term whose backward drops the mean's ``1 / n``."""

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """``aam``'s masked MSE value with the broken backward."""
        valid, dtype = count_inputs(count_pred, count_true, mask)
        with torch.no_grad():
            value = super().compute_count_loss(count_pred, count_true, mask)
        result: Tensor = _FusedCountMse.apply(count_pred, count_true, valid, value, dtype)  # type: ignore[no-untyped-call]
        return result
