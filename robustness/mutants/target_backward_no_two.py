"""A fused regression MSE whose hand-written backward forgets the factor 2 (C-GRAD-1).

The value is ``aam``'s exactly; only the custom :class:`torch.autograd.Function`'s backward
is wrong, returning ``(p - t) / n`` instead of ``2 (p - t) / n``: every value rule passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import _compute_dtype, compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class _FusedMse(torch.autograd.Function):
    """Forward: the given (correct) value; backward: ``(p - t) / n``."""

    @staticmethod
    def forward(ctx: Any, pred: Tensor, true: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(pred, true)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        pred, true = ctx.saved_tensors
        dtype = _compute_dtype(pred, true)
        diff = pred.to(dtype) - true.to(dtype)
        return (diff * (grad / pred.numel())).to(pred.dtype), None, None


class MultiTaskLoss(_Correct):
    """``aam``'s loss with a fused MSE target term whose backward drops the factor 2."""

    def compute_target_loss(
        self, target_pred: Tensor, target_true: Tensor, is_classifier: bool = False
    ) -> Tensor:
        """``aam``'s target loss; the regression MSE with the broken backward."""
        if is_classifier or self.target_loss_type != "mse":
            return super().compute_target_loss(target_pred, target_true, is_classifier)
        with torch.no_grad():
            value = super().compute_target_loss(target_pred, target_true, is_classifier)
        result: Tensor = _FusedMse.apply(target_pred, target_true, value)  # type: ignore[no-untyped-call]
        return result
