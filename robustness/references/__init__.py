"""Float64 NumPy references for every loss term and metric (re-exports only).

The code lives in ``_losses`` and ``_metrics``; every value the contract compares against
is computed here, on the host, in float64.
"""

from __future__ import annotations

from robustness.references._losses import (
    HUBER_DELTA,
    LOSS_TERMS,
    reference_base_loss,
    reference_count_loss,
    reference_gradients,
    reference_losses,
    reference_nucleotide_loss,
    reference_pairwise_distances,
    reference_target_loss,
    reference_total_loss,
)
from robustness.references._metrics import (
    r2_condition,
    reference_classification_metrics,
    reference_confusion_matrix,
    reference_count_metrics,
    reference_r2,
    reference_regression_metrics,
)

__all__ = [
    "HUBER_DELTA",
    "LOSS_TERMS",
    "r2_condition",
    "reference_base_loss",
    "reference_classification_metrics",
    "reference_confusion_matrix",
    "reference_count_loss",
    "reference_count_metrics",
    "reference_gradients",
    "reference_losses",
    "reference_nucleotide_loss",
    "reference_pairwise_distances",
    "reference_r2",
    "reference_regression_metrics",
    "reference_target_loss",
    "reference_total_loss",
]
