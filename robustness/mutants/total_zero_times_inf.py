"""total_loss multiplies every term by its penalty: ``0 * inf`` is NaN (C-REF-1 on total_loss)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss before the zero-penalty fix of its total."""

    def _total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """``sum(penalty * term)`` over every term, zero penalties included."""
        return (
            self.target_penalty * losses["target_loss"]
            + self.count_penalty * losses["count_loss"]
            + self.penalty * losses["base_loss"]
            + self.nuc_penalty * losses["nuc_loss"]
        )
