"""Pairwise distances by the Gram expansion cancel for near-duplicate rows (C-DIST-1)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from aam.training.losses import MultiTaskLoss as _Correct

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


def compute_pairwise_distances(embeddings: Tensor) -> Tensor:
    """``sqrt(|a|² + |b|² - 2 a·b)``, clamped at 1e-12 against negative rounding residue."""
    norms = (embeddings * embeddings).sum(dim=1)
    squares = norms.unsqueeze(1) + norms.unsqueeze(0) - 2.0 * embeddings @ embeddings.T
    return torch.sqrt(squares.clamp(min=1e-12))


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
