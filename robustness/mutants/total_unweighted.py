"""total_loss sums the terms and forgets the penalties (C-INVARIANT-1)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose total is the plain sum of the terms."""

    def _total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """``target + count + base + nuc``."""
        return (
            losses["target_loss"] + losses["count_loss"] + losses["base_loss"] + losses["nuc_loss"]
        )
