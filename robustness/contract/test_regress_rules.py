"""The packaged regression guard: C-REGRESS-1..4, a candidate against a baseline.

Collected only when a baseline is configured (``--robustness-baseline`` and/or
``--robustness-baseline-metrics``; the gate's ``--baseline``, ``--baseline-metrics`` or
``--baseline-ref``); otherwise the plugin leaves this module out, so the normal gate table has
no rows for it. Terms and metrics outside ``--robustness-regress-only`` or inside
``--robustness-regress-skip`` are deselected.

The inputs are the contract suite's: ragged batches with every head (per-head terms are
compared on their own head, see ``robustness.properties._regress``), ordinary values with
non-contiguous layouts, finite extremes, NaN/inf/finfo.max garbage at padded positions and
non-finite values at valid positions (where both implementations must raise); every dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from robustness.baseline import RegressSelection
from robustness.contract.test_loss_rules import (
    ALL_PADDING,
    DUPLICATES,
    SINGLE,
    ZERO_PENALTY_OVERFLOW,
    _full_batch,
)
from robustness.properties._losses import GARBAGE_FILLS, LOSS_TERMS
from robustness.properties._regress import (
    check_regress_gradients,
    check_regress_metrics,
    check_regress_outcome,
    check_regress_values,
)
from robustness.strategies import MultiTaskBatch, multitask_batches
from robustness.strategies._metric_data import (
    ClassificationData,
    CountData,
    Partition,
    RegressionData,
    classification_data,
    count_data,
    partitioned,
    regression_data,
)
from robustness.target import MetricsTarget


def _with_garbage(pair: tuple[MultiTaskBatch, str]) -> MultiTaskBatch:
    batch, fill = pair
    return batch.with_garbage(GARBAGE_FILLS[fill](batch.dtype))


ORDINARY = multitask_batches(allow_noncontiguous=True)
GARBAGE_AT_PADDING = st.tuples(multitask_batches(), st.sampled_from(sorted(GARBAGE_FILLS))).map(
    _with_garbage
)
BATCHES = st.one_of(
    ORDINARY,
    multitask_batches(kind="extreme"),
    GARBAGE_AT_PADDING,
    multitask_batches(kind="garbage"),
)


def _remainder_batch() -> MultiTaskBatch:
    """Three samples after a batch of four, ragged, NaN at padding: the seed's NaN story."""
    gen = torch.Generator().manual_seed(7)
    size, asvs, length, vocab = 3, 3, 4, 4
    mask = torch.arange(asvs) < torch.tensor([[3], [1], [0]])
    nuc_mask = (torch.arange(length) < torch.tensor([[[4], [2], [1]]] * 3)) & mask[..., None]
    upper = torch.rand(size, size, generator=gen).triu(1)
    batch = MultiTaskBatch(
        outputs={
            "target_prediction": torch.randn(size, 2, generator=gen),
            "count_prediction": torch.randn(size, asvs, 1, generator=gen),
            "base_prediction": torch.rand(size, size, generator=gen),
            "nuc_predictions": torch.randn(size, asvs, length, vocab, generator=gen),
        },
        targets={
            "target": torch.randn(size, 2, generator=gen),
            "counts": torch.randn(size, asvs, 1, generator=gen),
            "mask": mask,
            "base_target": upper + upper.T,
            "nucleotides": torch.where(
                nuc_mask, torch.randint(0, vocab, (size, asvs, length), generator=gen), -100
            ),
            "nuc_mask": nuc_mask,
        },
        padded={
            "target_prediction": torch.zeros(size, 2, dtype=torch.bool),
            "count_prediction": ~mask[..., None],
            "base_prediction": torch.eye(size, dtype=torch.bool),
            "nuc_predictions": (~nuc_mask)[..., None].expand(size, asvs, length, vocab).clone(),
        },
        loss_kwargs={"penalty": 1.0, "nuc_penalty": 0.5},
    )
    return batch.with_garbage(math.nan)


REMAINDER = _remainder_batch()


def _huge_counts(batch: MultiTaskBatch) -> MultiTaskBatch:
    """Count errors of 1.2e19 at the 4 valid ASVs: each square is finite in float32, their
    sum is not, their mean is (a sum-then-divide rewrite overflows)."""
    valid = ~batch.padded["count_prediction"]
    outputs = dict(batch.outputs)
    targets = dict(batch.targets)
    outputs["count_prediction"] = torch.where(valid, 6e18, batch.outputs["count_prediction"])
    targets["counts"] = torch.where(valid, -6e18, batch.targets["counts"])
    return dataclasses.replace(batch, outputs=outputs, targets=targets)


HUGE_COUNTS = _huge_counts(REMAINDER)


def _nan_at_valid() -> MultiTaskBatch:
    """NaN at a *valid* count prediction: the baseline raises, so must the candidate."""
    batch = _full_batch(3, seed=9)
    outputs = dict(batch.outputs)
    outputs["count_prediction"] = batch.outputs["count_prediction"].clone()
    outputs["count_prediction"][1, 0, 0] = math.nan  # sample 1 has one valid ASV
    return dataclasses.replace(batch, outputs=outputs)


NAN_AT_VALID = _nan_at_valid()
# Classification whose class weights are all 0: the weighted mean is 0/0 unless guarded.
ZERO_WEIGHTS = dataclasses.replace(
    _full_batch(3, classifier=True, seed=10),
    loss_kwargs={"penalty": 1.0, "nuc_penalty": 0.5, "class_weights": torch.zeros(3)},
)
# The generated inputs rarely hit these; every loss comparison tries them first.
LOSS_EXAMPLES = (
    REMAINDER,
    HUGE_COUNTS,
    DUPLICATES,  # duplicate and near-duplicate embedding rows
    ZERO_PENALTY_OVERFLOW,  # a zero penalty on a term that overflowed to inf
    ALL_PADDING,  # no valid position anywhere
    SINGLE,  # B = 1
    NAN_AT_VALID,
    ZERO_WEIGHTS,
)


def _loss_examples(test: Any) -> Any:
    for batch in reversed(LOSS_EXAMPLES):
        test = example(batch=batch)(test)
    return test


# --------------------------------------------------------------------------- C-REGRESS-1..3


@pytest.mark.rule("C-REGRESS-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=BATCHES)
@_loss_examples
def test_loss_values_agree_with_the_baseline(
    loss_target, loss_baseline, contract_device, term, batch
):
    check_regress_values(loss_target, batch.to(contract_device), term=term, baseline=loss_baseline)


@pytest.mark.rule("C-REGRESS-2")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=BATCHES)
@_loss_examples
def test_loss_is_finite_and_raises_where_the_baseline_does(
    loss_target, loss_baseline, contract_device, term, batch
):
    check_regress_outcome(loss_target, batch.to(contract_device), term=term, baseline=loss_baseline)


@pytest.mark.rule("C-REGRESS-3")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=BATCHES)
@_loss_examples
def test_loss_gradients_agree_with_the_baseline(
    loss_target, loss_baseline, contract_device, term, batch
):
    check_regress_gradients(
        loss_target, batch.to(contract_device), term=term, baseline=loss_baseline
    )


# --------------------------------------------------------------------------- C-REGRESS-4

# float16 squares of 1e3 overflow float16 arithmetic.
HALF_SQUARES = RegressionData(
    torch.tensor([1000.0, -1000.0, 500.0], dtype=torch.float16),
    torch.tensor([-1000.0, 1000.0, 0.0], dtype=torch.float16),
)
# Unequal, non-empty states: a merge that weights means equally shows at the second merge.
UNEQUAL = (
    RegressionData(
        torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
        torch.tensor([1.0, 2.0, 5.0, 4.0, 9.0, 6.0, 0.0]),
    ),
    Partition((1, 2, 4)),
)
# Labels 0 and 3 never occur, class 2 is never predicted; empty first and last batches.
ABSENT = (
    ClassificationData(
        torch.tensor([[-0.1, -3.0, -4.0, -5.0, -6.0]] * 3 + [[-3.0, -0.1, -4.0, -5.0, -6.0]]),
        torch.tensor([1, 1, 2, 4]),
        5,
    ),
    Partition((0, 2, 2, 0)),
)
NAN_PADDING = (
    CountData(
        torch.tensor([[1.0, math.nan], [math.inf, -math.inf]]).unsqueeze(-1),
        torch.tensor([[2.0, math.nan], [3.0, 3.4e38]]).unsqueeze(-1),
        torch.tensor([[True, False], [False, False]]),
    ),
    Partition((0, 1, 1, 0)),
)


# Valid ASVs in every batch: a merge that moves (rather than copies) the other state's sums
# only shows when the merged-in states hold data.
SPREAD_COUNTS = (
    CountData(
        torch.tensor([[1.0, 2.0], [3.0, 5.0], [4.0, -1.0]]).unsqueeze(-1),
        torch.tensor([[2.0, 2.0], [1.0, 5.5], [4.0, 0.0]]).unsqueeze(-1),
        torch.tensor([[True, True], [True, False], [True, True]]),
    ),
    Partition((1, 1, 1)),
)


def _check_metrics(
    metrics_target: MetricsTarget,
    metrics_baseline: MetricsTarget,
    selection: RegressSelection,
    device: str,
    metric: str,
    case: tuple[Any, Partition],
) -> None:
    data, partition = case
    check_regress_metrics(
        metrics_target,
        data,
        metric=metric,
        baseline=metrics_baseline,
        partition=partition,
        keys=selection.keys(metric),
        ignore=selection.ignored(metric),
        device=device,
    )


# Constant targets: R² is defined by the contract (C-METRIC-EDGE-1), not by SSE / SST = x/0.
CONSTANT = (
    RegressionData(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])),
    Partition((1, 2)),
)


@pytest.mark.rule("C-REGRESS-4", term="regression")
@given(case=partitioned(regression_data()))
@example(case=(HALF_SQUARES, Partition((3,))))
@example(case=UNEQUAL)
@example(case=CONSTANT)
def test_regression_metrics_agree_with_the_baseline(
    metrics_target, metrics_baseline, regress_selection, contract_device, case
):
    _check_metrics(
        metrics_target, metrics_baseline, regress_selection, contract_device, "regression", case
    )


@pytest.mark.rule("C-REGRESS-4", term="classification")
@given(case=partitioned(classification_data()))
@example(case=ABSENT)
def test_classification_metrics_agree_with_the_baseline(
    metrics_target, metrics_baseline, regress_selection, contract_device, case
):
    _check_metrics(
        metrics_target,
        metrics_baseline,
        regress_selection,
        contract_device,
        "classification",
        case,
    )


@pytest.mark.rule("C-REGRESS-4", term="count")
@given(case=partitioned(count_data()))
@example(case=NAN_PADDING)
@example(case=SPREAD_COUNTS)
def test_count_metrics_agree_with_the_baseline(
    metrics_target, metrics_baseline, regress_selection, contract_device, case
):
    _check_metrics(
        metrics_target, metrics_baseline, regress_selection, contract_device, "count", case
    )


# Targets around 1e8 streamed in uneven batches: where a rewrite of R² loses digits.
OFFSET = (
    RegressionData(
        1e8 + torch.tensor([0.5, -1.0, 1.5, 0.0, 2.0, -0.5], dtype=torch.float64),
        1e8 + torch.tensor([0.0, -1.0, 1.0, 0.5, 1.5, -1.0], dtype=torch.float64),
        "offset",
    ),
    Partition((2, 0, 1, 3)),
)


@pytest.mark.rule("C-REGRESS-4", term="regression")
def test_offset_regression_metrics_agree_with_the_baseline(
    metrics_target, metrics_baseline, regress_selection, contract_device
):
    data, partition = OFFSET
    check_regress_metrics(
        metrics_target,
        data,
        metric="regression",
        baseline=metrics_baseline,
        partition=partition,
        keys=regress_selection.keys("regression"),
        ignore=regress_selection.ignored("regression"),
        device=contract_device,
    )
