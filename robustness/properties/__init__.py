"""One check per contract rule, usable from any test (re-exports only).

Each ``check_*`` raises :class:`robustness.errors.ContractViolation` carrying the rule id,
the term or metric, and a readable description of the minimal input. Loss rules live in
``_losses``, gradients against the float64 reference (C-GRAD-1) in ``_gradients``, metric
and streaming rules in ``_metrics``, end-to-end weight safety in ``_weights``, the distributed
rules (run in a real process group) in ``_distributed``, and the regression guard's
differential rules in ``_regress``.
"""

from __future__ import annotations

from robustness.properties._distributed import (
    DDP_JOB_TIMEOUT,
    check_gathered_base_loss,
    check_sync_distributed,
    distributed_skip_reason,
)
from robustness.properties._gradients import GRADIENT_CHECKS, check_reference_gradients
from robustness.properties._losses import (
    GARBAGE_FILLS,
    LOSS_CHECKS,
    LOSS_INPUT_CASES,
    LOSS_SHAPE_CASES,
    LOSS_TERMS,
    check_device_agreement,
    check_empty_terms,
    check_finite_gradients,
    check_finite_values,
    check_half_precision,
    check_invalid_inputs,
    check_invariants,
    check_mask_gradients,
    check_mask_values,
    check_nonfinite_detection,
    check_padding_invariance,
    check_pairwise_distances,
    check_purity,
    check_ragged_batches,
    check_reference_values,
    check_scalar_terms,
    check_shape_mismatch,
    check_zero_class_weights,
)
from robustness.properties._metrics import (
    INPUT_CASES,
    METRIC_FAMILIES,
    check_metric_edge_cases,
    check_metric_input_validation,
    check_metric_reference,
    check_stream_merge,
    check_stream_partition,
    check_stream_stability,
    check_stream_vectorized,
)
from robustness.properties._regress import (
    REGRESS_RULES,
    check_regress_gradients,
    check_regress_metrics,
    check_regress_outcome,
    check_regress_values,
)
from robustness.properties._weights import (
    OPTIMIZERS,
    RULE,
    check_nonfinite_batch_leaves_weights_unchanged,
    check_weights_stay_finite,
    make_optimizer,
)

__all__ = [
    "DDP_JOB_TIMEOUT",
    "GARBAGE_FILLS",
    "GRADIENT_CHECKS",
    "INPUT_CASES",
    "LOSS_CHECKS",
    "LOSS_INPUT_CASES",
    "LOSS_SHAPE_CASES",
    "LOSS_TERMS",
    "METRIC_FAMILIES",
    "OPTIMIZERS",
    "REGRESS_RULES",
    "RULE",
    "check_device_agreement",
    "check_empty_terms",
    "check_finite_gradients",
    "check_finite_values",
    "check_gathered_base_loss",
    "check_half_precision",
    "check_invalid_inputs",
    "check_invariants",
    "check_mask_gradients",
    "check_mask_values",
    "check_metric_edge_cases",
    "check_metric_input_validation",
    "check_metric_reference",
    "check_nonfinite_batch_leaves_weights_unchanged",
    "check_nonfinite_detection",
    "check_padding_invariance",
    "check_pairwise_distances",
    "check_purity",
    "check_ragged_batches",
    "check_reference_gradients",
    "check_reference_values",
    "check_regress_gradients",
    "check_regress_metrics",
    "check_regress_outcome",
    "check_regress_values",
    "check_scalar_terms",
    "check_shape_mismatch",
    "check_stream_merge",
    "check_stream_partition",
    "check_stream_stability",
    "check_stream_vectorized",
    "check_sync_distributed",
    "check_weights_stay_finite",
    "check_zero_class_weights",
    "distributed_skip_reason",
    "make_optimizer",
]
