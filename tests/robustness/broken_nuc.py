"""A loss target broken only in ``nuc_loss``: it range-checks ids at padded positions too.

The bug an independent implementation had: ``nucleotides`` are validated against ``[0, V)``
everywhere, so the ``-100`` that padded positions conventionally hold raises ``ValueError``.
Every other term is ``aam``'s. The gate must blame ``nuc_loss`` (and ``total_loss``) alone,
and as one cause.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose nucleotide term rejects out-of-range ids at padded positions."""

    def compute_nucleotide_loss(self, nuc_pred: Tensor, nuc_true: Tensor, mask: Tensor) -> Tensor:
        """``aam``'s nucleotide loss, after checking every id (padding included) is in range."""
        vocab = nuc_pred.shape[-1]
        bad = (nuc_true < 0) | (nuc_true >= vocab)
        if bool(bad.any()):
            at = tuple(torch.nonzero(bad)[0].tolist())
            raise ValueError(
                f"Invalid target values: nucleotides must be in [0, {vocab}), got "
                f"{int(nuc_true[at])} at {at} ({int(bad.sum())} of {bad.numel()})"
            )
        return super().compute_nucleotide_loss(nuc_pred, nuc_true, mask)
