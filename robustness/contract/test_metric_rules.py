"""The packaged metric contract suite: C-METRIC-REF-1, -INPUT-1, -EDGE-1 and C-STREAM-1..4.

Every test draws its inputs with the harness's strategies and adds the historical failures as
explicit examples; the checks (``robustness.properties._metrics``) raise ``ContractViolation``
with a repro file. Example budgets come from the Hypothesis profile (dev / ci / thorough).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

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

F64, F16 = torch.float64, torch.float16


def _reg(pred, true, dtype=torch.float32, kind="ordinary"):
    return RegressionData(torch.tensor(pred, dtype=dtype), torch.tensor(true, dtype=dtype), kind)


def _cls(pred, true, num_classes=None, dtype=torch.float32):
    pred_t = torch.tensor(pred, dtype=dtype if isinstance(pred[0], list) else torch.int64)
    return ClassificationData(pred_t, torch.tensor(true), num_classes)


def _cnt(pred, true, mask, dtype=torch.float32):
    return CountData(
        torch.tensor(pred, dtype=dtype).unsqueeze(-1),
        torch.tensor(true, dtype=dtype).unsqueeze(-1),
        torch.tensor(mask),
    )


NAN, INF = math.nan, math.inf

# [B, 1] predictions against [B] targets: broadcasting would compare every pair.
BROADCAST_TRAP = RegressionData(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 4.0]))
# float16 squares of 1e3 overflow float16 arithmetic.
HALF_SQUARES = _reg([1000.0, -1000.0, 500.0], [-1000.0, 1000.0, 0.0], dtype=F16)
# The mean of [0.1] * 3 is not exactly 0.1: a computed variance leaves a residue.
CONSTANT_TENTHS = _reg([0.1, 0.1, 0.2], [0.1, 0.1, 0.1], dtype=F64, kind="constant")
CONSTANT_PERFECT = _reg([0.1, 0.1, 0.1], [0.1, 0.1, 0.1], dtype=F64, kind="constant")
SINGLE = _reg([2.0], [3.0], kind="single")
EMPTY = RegressionData(torch.zeros(0), torch.zeros(0, 1), "empty")
# Targets around 1e8 (torchmetrics 1.9 reports R² > 1 here in float64).
OFFSET = RegressionData(
    1e8 + torch.tensor([0.5, -1.0, 1.5, 0.0, 2.0, -0.5], dtype=F64),
    1e8 + torch.tensor([0.0, -1.0, 1.0, 0.5, 1.5, -1.0], dtype=F64),
    "offset",
)
# Labels 0 and 3 never occur; class 2 is never predicted.
ABSENT = _cls(
    [[-0.1, -3.0, -4.0, -5.0, -6.0]] * 3 + [[-3.0, -0.1, -4.0, -5.0, -6.0]], [1, 1, 2, 4], 5
)
NAN_PADDING = _cnt(
    [[1.0, NAN], [INF, -INF]], [[2.0, NAN], [3.0, 3.4e38]], [[True, False], [False, False]]
)
ALL_PADDING = _cnt([[NAN, INF]], [[NAN, 1.0]], [[0.0, 0.0]])


# --------------------------------------------------------------------------- C-METRIC-REF-1


@pytest.mark.rule("C-METRIC-REF-1", term="regression")
@given(data=regression_data())
@example(data=BROADCAST_TRAP)
@example(data=HALF_SQUARES)
@example(data=OFFSET)
def test_regression_metrics_match_the_float64_reference(metrics_target, contract_device, data):
    check_metric_reference(metrics_target, data, metric="regression", device=contract_device)


@pytest.mark.rule("C-METRIC-REF-1", term="classification")
@given(data=classification_data())
@example(data=ABSENT)
@example(data=ABSENT.with_ids())
def test_classification_metrics_match_the_float64_reference(metrics_target, contract_device, data):
    check_metric_reference(metrics_target, data, metric="classification", device=contract_device)


@pytest.mark.rule("C-METRIC-REF-1", term="count")
@given(data=count_data())
@example(data=NAN_PADDING)
def test_count_metrics_match_the_float64_reference(metrics_target, contract_device, data):
    check_metric_reference(metrics_target, data, metric="count", device=contract_device)


# --------------------------------------------------------------------------- C-METRIC-INPUT-1


_ID_CASES = [c for c in INPUT_CASES["classification"] if c != "length_mismatch"]


@pytest.mark.rule("C-METRIC-INPUT-1", term="classification")
@pytest.mark.parametrize("case", _ID_CASES)
@given(
    data=classification_data(min_batch=1, pred_form="ids", num_classes_given=True),
    index=st.integers(0, 1000),
    offset=st.integers(0, 3),
)
@example(data=_cls([0, 1, 2], [2, 1, 0], 3), index=0, offset=0)  # -1 wraps to the last class
def test_class_ids_outside_range_raise_value_error(
    metrics_target, contract_device, case, data, index, offset
):
    check_metric_input_validation(
        metrics_target,
        data,
        metric="classification",
        case=case,
        index=index,
        offset=offset,
        device=contract_device,
    )


@pytest.mark.rule("C-METRIC-INPUT-1", term="classification")
@given(data=classification_data(min_batch=1, pred_form="log_probs"), index=st.integers(0, 1000))
@example(data=ABSENT, index=0)
def test_negative_true_ids_raise_value_error_with_log_probs(
    metrics_target, contract_device, data, index
):
    check_metric_input_validation(
        metrics_target,
        data,
        metric="classification",
        case="negative_true",
        index=index,
        device=contract_device,
    )


@pytest.mark.rule("C-METRIC-INPUT-1", term="classification")
@given(
    data=classification_data(min_batch=1, pred_form="log_probs", num_classes_given=True),
    index=st.integers(0, 1000),
    offset=st.integers(0, 3),
)
@example(data=ABSENT, index=1, offset=0)
def test_target_ids_at_or_above_num_classes_raise_value_error_with_log_probs(
    metrics_target, contract_device, data, index, offset
):
    check_metric_input_validation(
        metrics_target,
        data,
        metric="classification",
        case="true_out_of_range",
        index=index,
        offset=offset,
        device=contract_device,
    )


@pytest.mark.rule("C-METRIC-INPUT-1")
@pytest.mark.parametrize(
    ("metric", "case"),
    [
        (metric, case)
        for metric in METRIC_FAMILIES
        for case in INPUT_CASES[metric]
        if "mismatch" in case
    ],
)
@given(
    reg=regression_data(max_size=8),
    cls=classification_data(max_batch=8),
    cnt=count_data(max_batch=3),
)
@example(reg=BROADCAST_TRAP, cls=ABSENT, cnt=NAN_PADDING)
def test_mismatched_lengths_raise_value_error(
    metrics_target, contract_device, metric, case, reg, cls, cnt
):
    data = {"regression": reg, "classification": cls, "count": cnt}[metric]
    check_metric_input_validation(
        metrics_target, data, metric=metric, case=case, device=contract_device
    )


# --------------------------------------------------------------------------- C-METRIC-EDGE-1


@pytest.mark.rule("C-METRIC-EDGE-1", term="regression")
@given(data=regression_data(kind=("constant", "single", "empty")))
@example(data=CONSTANT_TENTHS)
@example(data=CONSTANT_PERFECT)
@example(data=SINGLE)
@example(data=EMPTY)
def test_regression_edge_cases_have_documented_results(metrics_target, contract_device, data):
    check_metric_edge_cases(metrics_target, data, metric="regression", device=contract_device)


@pytest.mark.rule("C-METRIC-EDGE-1", term="classification")
@given(data=classification_data(max_batch=3) | classification_data(min_batch=0, max_batch=0))
@example(data=ABSENT)
@example(data=ClassificationData(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 3))
@example(data=_cls([[-0.5, -1.0]], [1]))
def test_classification_edge_cases_have_documented_results(metrics_target, contract_device, data):
    check_metric_edge_cases(metrics_target, data, metric="classification", device=contract_device)


@pytest.mark.rule("C-METRIC-EDGE-1", term="count")
@given(data=count_data(max_batch=3))
@example(data=ALL_PADDING)
@example(data=NAN_PADDING)
def test_count_edge_cases_have_documented_results(metrics_target, contract_device, data):
    check_metric_edge_cases(metrics_target, data, metric="count", device=contract_device)


# --------------------------------------------------------------------------- C-STREAM-1


# Empty first and last batches, and a remainder batch.
_EDGES = Partition((0, 2, 1, 0))


@pytest.mark.rule("C-STREAM-1", term="regression")
@given(case=partitioned(regression_data()))
@example(case=(_reg([1.0, 2.0, 4.0], [1.5, 2.0, 3.0]), _EDGES))
@example(case=(CONSTANT_TENTHS, Partition((1, 1, 1))))
def test_streamed_regression_equals_one_shot(metrics_target, contract_device, case):
    data, partition = case
    check_stream_partition(
        metrics_target, data, metric="regression", partition=partition, device=contract_device
    )


@pytest.mark.rule("C-STREAM-1", term="classification")
@given(case=partitioned(classification_data()))
@example(case=(_cls([0, 2, 1], [0, 1, 2]), _EDGES))  # classes appear batch by batch
def test_streamed_classification_equals_one_shot(metrics_target, contract_device, case):
    data, partition = case
    check_stream_partition(
        metrics_target,
        data,
        metric="classification",
        partition=partition,
        device=contract_device,
    )


@pytest.mark.rule("C-STREAM-1", term="count")
@given(case=partitioned(count_data()))
@example(case=(NAN_PADDING, Partition((0, 1, 1, 0))))
def test_streamed_count_equals_one_shot(metrics_target, contract_device, case):
    data, partition = case
    check_stream_partition(
        metrics_target, data, metric="count", partition=partition, device=contract_device
    )


# --------------------------------------------------------------------------- C-STREAM-2


# Unequal, non-empty states: a merge that weights means equally shows at the second merge.
_UNEQUAL = Partition((1, 2, 4))


@pytest.mark.rule("C-STREAM-2", term="regression")
@given(case=partitioned(regression_data(min_size=3), min_batches=3))
@example(
    case=(_reg([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [1.0, 2.0, 5.0, 4.0, 9.0, 6.0, 0.0]), _UNEQUAL)
)
def test_regression_merge_is_commutative_associative_and_exact(
    metrics_target, contract_device, case
):
    data, partition = case
    check_stream_merge(
        metrics_target, data, metric="regression", partition=partition, device=contract_device
    )


@pytest.mark.rule("C-STREAM-2", term="classification")
@given(case=partitioned(classification_data(min_batch=3), min_batches=3))
@example(case=(_cls([0, 1, 1, 2, 0, 2, 2], [0, 1, 2, 2, 1, 2, 0], 3), _UNEQUAL))
def test_classification_merge_is_commutative_associative_and_exact(
    metrics_target, contract_device, case
):
    data, partition = case
    check_stream_merge(
        metrics_target,
        data,
        metric="classification",
        partition=partition,
        device=contract_device,
    )


@pytest.mark.rule("C-STREAM-2", term="count")
@given(case=partitioned(count_data(min_batch=3), min_batches=3))
@example(case=(NAN_PADDING, Partition((1, 0, 1))))
def test_count_merge_is_commutative_associative_and_exact(metrics_target, contract_device, case):
    data, partition = case
    check_stream_merge(
        metrics_target, data, metric="count", partition=partition, device=contract_device
    )


# --------------------------------------------------------------------------- C-STREAM-3


@pytest.mark.rule("C-STREAM-3", term="regression.r2")
@given(case=partitioned(regression_data(kind="offset", min_size=2)))
@example(case=(OFFSET, Partition((2, 1, 3))))
def test_r2_of_large_offset_targets_is_stable(metrics_target, contract_device, case):
    data, partition = case
    check_stream_stability(metrics_target, data, partition=partition, device=contract_device)


# --------------------------------------------------------------------------- C-STREAM-4


@pytest.mark.rule("C-STREAM-4")
@pytest.mark.parametrize("metric", METRIC_FAMILIES)
def test_streaming_update_is_vectorized_with_bounded_state(metrics_target, contract_device, metric):
    check_stream_vectorized(metrics_target, metric=metric, device=contract_device)
