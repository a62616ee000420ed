"""Pairwise distances take an unguarded ``sqrt``: NaN gradient for duplicate rows (C-DIST-1)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


def compute_pairwise_distances(embeddings: Tensor) -> Tensor:
    """``sqrt(sum((e_i - e_j)**2))``: the derivative of ``sqrt`` at 0 is infinite."""
    diff = embeddings.unsqueeze(1) - embeddings.unsqueeze(0)
    return torch.sqrt((diff * diff).sum(dim=-1))


class MultiTaskLoss(_Correct):
    """``aam``'s loss whose unifrac base prediction comes from these distances."""

    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        is_classifier: bool = False,
        encoder_type: str = "unifrac",
    ) -> dict[str, Tensor]:
        """``aam``'s forward with ``embeddings`` replaced by their pairwise distances."""
        if encoder_type == "unifrac" and "embeddings" in outputs:
            distances = compute_pairwise_distances(outputs["embeddings"])
            outputs = {k: v for k, v in outputs.items() if k != "embeddings"}
            outputs["base_prediction"] = distances
        return super().forward(outputs, targets, is_classifier, encoder_type)
