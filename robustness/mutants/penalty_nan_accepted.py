"""Penalties are validated with ``value < 0``, which NaN and inf pass (C-INPUT-1)."""

from __future__ import annotations

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


def _check_penalty(name: str, value: float) -> float:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value!r}")
    return float(value)


class MultiTaskLoss(_Correct):
    """``aam``'s loss with a sign-only penalty check."""

    def __init__(
        self,
        penalty: float = 1.0,
        nuc_penalty: float = 1.0,
        class_weights: Tensor | None = None,
        target_penalty: float = 1.0,
        count_penalty: float = 1.0,
        target_loss_type: str = "mse",
    ) -> None:
        super().__init__(class_weights=class_weights, target_loss_type=target_loss_type)
        self.penalty = _check_penalty("penalty", penalty)
        self.nuc_penalty = _check_penalty("nuc_penalty", nuc_penalty)
        self.target_penalty = _check_penalty("target_penalty", target_penalty)
        self.count_penalty = _check_penalty("count_penalty", count_penalty)
