"""nuc_loss relies on ``ignore_index``, not selection: padded logits reach backward (C-MASK-2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose nucleotide term is ``F.cross_entropy`` over every position."""

    def compute_nucleotide_loss(self, nuc_pred: Tensor, nuc_true: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy with padded ids rewritten to the ignore index."""
        ids = nuc_true.long().masked_fill(mask == 0, -100)
        logits = nuc_pred.float().reshape(-1, nuc_pred.shape[-1])
        nll = F.cross_entropy(logits, ids.reshape(-1), ignore_index=-100, reduction="sum")
        return nll / (mask != 0).sum().clamp(min=1)
