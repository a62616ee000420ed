"""The metric checks fail on deliberately broken metrics and pass on aam (and a plain toy).

Each broken variant below is a small, plausible bug in an otherwise correct toy implementation
(``_Toy*``); each check must kill the variants of its rule, with Hypothesis drawing the inputs
from the harness's own strategies (no shrinking: any failing example proves the kill). The
strategies and the float64 references are tested here too, the references against
scikit-learn (a test-only oracle; the robustness package never imports it).
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from robustness.errors import ContractViolation, HarnessUsageError, from_plain, to_plain
from robustness.properties._metrics import (
    ID_CASES,
    INPUT_CASES,
    _bad_input,
    _input_case_usable,
    check_metric_edge_cases,
    check_metric_input_validation,
    check_metric_reference,
    check_stream_merge,
    check_stream_partition,
    check_stream_stability,
    check_stream_vectorized,
)
from robustness.references._metrics import (
    reference_classification_metrics,
    reference_count_metrics,
    reference_r2,
    reference_regression_metrics,
)
from robustness.strategies._metric_data import (
    ClassificationData,
    CountData,
    Partition,
    RegressionData,
    classification_data,
    count_data,
    partitioned,
    partitions,
    regression_data,
)
from robustness.target import MetricsTarget, load_metrics_target

# --------------------------------------------------------------------------- a correct toy


class _ToyRegression:
    """Count, mean, M2 (Chan), |d| and d² sums in float64; min/max of targets for constancy."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), dtype=torch.float64)
        self.n, self.mean, self.m2, self.abs, self.sq = (
            0,
            z.clone(),
            z.clone(),
            z.clone(),
            z.clone(),
        )
        self.lo = torch.full((), math.inf, dtype=torch.float64)
        self.hi = torch.full((), -math.inf, dtype=torch.float64)

    def _flat(self, y_pred, y_true):
        p, t = y_pred.reshape(-1).double(), y_true.reshape(-1).double()
        if p.numel() != t.numel():
            raise ValueError(f"y_pred has {p.numel()} elements, y_true {t.numel()}")
        return p, t

    def update(self, y_pred, y_true):
        p, t = self._flat(y_pred, y_true)
        if t.numel() == 0:
            return
        mean = t.mean()
        d = p - t
        self._combine(t.numel(), mean, ((t - mean) ** 2).sum(), d.abs().sum(), (d * d).sum())
        self.lo = torch.minimum(self.lo, t.min())
        self.hi = torch.maximum(self.hi, t.max())

    def _combine(self, n, mean, m2, abs_sum, sq_sum):
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.abs += abs_sum
        self.sq += sq_sum
        self.n = total

    def merge(self, other):
        if other.n:
            self._combine(other.n, other.mean, other.m2, other.abs, other.sq)
            self.lo = torch.minimum(self.lo, other.lo)
            self.hi = torch.maximum(self.hi, other.hi)
        return self

    def _r2(self):
        if bool(self.lo == self.hi):
            return 1.0 if float(self.sq) == 0.0 else 0.0
        return float(1.0 - self.sq / self.m2)

    def compute(self):
        if self.n == 0:
            return {"mae": 0.0, "mse": 0.0, "r2": 0.0}
        return {"mae": float(self.abs / self.n), "mse": float(self.sq / self.n), "r2": self._r2()}


class _ToyClassification:
    """An int64 confusion matrix that grows when num_classes is not given."""

    def __init__(self, num_classes=None):
        self.num_classes = num_classes
        self.reset()

    def reset(self):
        k = self.num_classes or 0
        self.cm = torch.zeros((k, k), dtype=torch.int64)

    def _ids(self, y_pred, y_true):
        pred = y_pred.argmax(dim=1) if y_pred.dim() == 2 else y_pred.long()
        true = y_true.long()
        if pred.shape != true.shape:
            raise ValueError(f"{pred.numel()} predictions, {true.numel()} targets")
        k = self.num_classes
        if k is None:
            seen = torch.cat([pred, true])
            k = max(int(seen.max()) + 1 if seen.numel() else 0, self.cm.shape[0])
            if y_pred.dim() == 2:
                k = max(k, y_pred.shape[1])
        self._validate(pred, true, k)
        return pred, true, k

    def _validate(self, pred, true, k):
        both = torch.cat([pred, true])
        if both.numel() and (int(both.min()) < 0 or int(both.max()) >= k):
            raise ValueError(f"class ids must lie in [0, {k})")

    def _grow(self, k):
        if k > self.cm.shape[0]:
            grown = torch.zeros((k, k), dtype=torch.int64)
            old = self.cm.shape[0]
            grown[:old, :old] = self.cm
            self.cm = grown

    def _add(self, pred, true, k):
        self._grow(k)
        k = self.cm.shape[0]
        self.cm += torch.bincount(true * k + pred, minlength=k * k).reshape(k, k)

    def update(self, y_pred, y_true):
        self._add(*self._ids(y_pred, y_true))

    def merge(self, other):
        self._grow(other.cm.shape[0])
        k = other.cm.shape[0]
        self.cm[:k, :k] += other.cm
        return self

    def compute(self):
        cm = self.cm.double()
        n = float(cm.sum())
        out = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
        if n:
            tp, support, predicted = cm.diagonal(), cm.sum(1), cm.sum(0)

            def ratio(a, b):
                return torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a))

            out = {
                "accuracy": float(tp.sum() / n),
                "precision": float((ratio(tp, predicted) * support).sum() / n),
                "recall": float((ratio(tp, support) * support).sum() / n),
                "f1": float((ratio(2 * tp, support + predicted) * support).sum() / n),
            }
        return {**out, "confusion_matrix": self.cm.clone()}


class _ToyCount:
    """|d| and d² sums over valid positions, selected with where (padding never read)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.n, self.abs, self.sq = 0, 0.0, 0.0

    def _diff(self, count_pred, count_true, mask):
        if count_pred.shape != count_true.shape or mask.shape != count_pred.shape[:-1]:
            raise ValueError(f"shapes {count_pred.shape}, {count_true.shape}, mask {mask.shape}")
        valid = (mask != 0).unsqueeze(-1)
        p = torch.where(valid, count_pred.double(), 0.0)
        t = torch.where(valid, count_true.double(), 0.0)
        return p - t, valid

    def update(self, count_pred, count_true, mask):
        d, valid = self._diff(count_pred, count_true, mask)
        self.n += int(valid.sum())
        self.abs += float(d.abs().sum())
        self.sq += float((d * d).sum())

    def merge(self, other):
        self.n += other.n
        self.abs += other.abs
        self.sq += other.sq
        return self

    def compute(self):
        if self.n == 0:
            return {"mae": 0.0, "mse": 0.0}
        return {"mae": self.abs / self.n, "mse": self.sq / self.n}


def _toy(**classes: Any) -> MetricsTarget:
    """A metrics target whose one-shot functions are its streaming classes fed once."""
    ns = {
        "StreamingRegressionMetrics": _ToyRegression,
        "StreamingClassificationMetrics": _ToyClassification,
        "StreamingCountMetrics": _ToyCount,
        **classes,
    }

    def one_shot(cls_name):
        def run(*args, num_classes=None):
            cls = ns[cls_name]
            state = cls(num_classes) if cls_name == "StreamingClassificationMetrics" else cls()
            state.update(*args)
            return state.compute()

        return run

    module = types.SimpleNamespace(
        compute_regression_metrics=one_shot("StreamingRegressionMetrics"),
        compute_classification_metrics=one_shot("StreamingClassificationMetrics"),
        compute_count_metrics=one_shot("StreamingCountMetrics"),
        **ns,
    )
    return MetricsTarget(spec="toy", module=module)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- broken variants


class _NaiveR2(_ToyRegression):
    """R² from Σy and Σy² (the textbook formula that cancels catastrophically)."""

    def reset(self):
        super().reset()
        self.s1 = self.s2 = 0.0

    def update(self, y_pred, y_true):
        super().update(y_pred, y_true)
        t = y_true.reshape(-1).double()
        self.s1 += float(t.sum())
        self.s2 += float((t * t).sum())

    def merge(self, other):
        super().merge(other)
        self.s1 += other.s1
        self.s2 += other.s2
        return self

    def _r2(self):
        if bool(self.lo == self.hi):
            return super()._r2()
        return float(1.0 - self.sq / (self.s2 - self.s1 * self.s1 / self.n))


class _UnguardedR2(_ToyRegression):
    """No special case for constant targets: 1 - SSres / 0."""

    def _r2(self):
        return float(1.0 - self.sq / self.m2)


class _EmptyBatchNaN(_ToyRegression):
    """An empty batch is not skipped: its mean is NaN (0/0) and poisons the state."""

    def update(self, y_pred, y_true):
        p, t = self._flat(y_pred, y_true)
        mean = t.mean()
        d = p - t
        self._combine(t.numel(), mean, ((t - mean) ** 2).sum(), d.abs().sum(), (d * d).sum())
        if t.numel():
            self.lo = torch.minimum(self.lo, t.min())
            self.hi = torch.maximum(self.hi, t.max())


class _ResetKeepsCount(_ToyRegression):
    """reset() clears the sums but forgets the count."""

    def reset(self):
        n = getattr(self, "n", 0)
        super().reset()
        self.n = n


class _MeanOfMeansMerge(_ToyRegression):
    """merge averages the two means with equal weights instead of by counts."""

    def merge(self, other):
        if other.n:
            total = self.n + other.n
            delta = other.mean - self.mean
            self.m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / total)
            self.mean = (self.mean + other.mean) / 2 if self.n else other.mean.clone()
            self.abs += other.abs
            self.sq += other.sq
            self.n = total
            self.lo = torch.minimum(self.lo, other.lo)
            self.hi = torch.maximum(self.hi, other.hi)
        return self


class _Truncating(_ToyRegression):
    """Different lengths are silently truncated to the shorter one."""

    def _flat(self, y_pred, y_true):
        p, t = y_pred.reshape(-1).double(), y_true.reshape(-1).double()
        n = min(p.numel(), t.numel())
        return p[:n], t[:n]


class _HalfPrecisionSums(_ToyRegression):
    """Squared differences summed in the input dtype: float16 squares of 1e3 overflow."""

    def update(self, y_pred, y_true):
        sq_before = self.sq.clone()
        super().update(y_pred, y_true)
        d = y_pred.reshape(-1) - y_true.reshape(-1)
        self.sq = sq_before + (d * d).sum().double()


class _PerElementLoop(_ToyRegression):
    """Welford one element at a time in Python: right values, not vectorized."""

    def update(self, y_pred, y_true):
        p, t = self._flat(y_pred, y_true)
        for pi, ti in zip(p.tolist(), t.tolist(), strict=True):
            one = torch.tensor(ti, dtype=torch.float64)
            self._combine(
                1, one, torch.zeros((), dtype=torch.float64), abs(pi - ti), (pi - ti) ** 2
            )
            self.lo = torch.minimum(self.lo, one)
            self.hi = torch.maximum(self.hi, one)


class _WrappingIds(_ToyClassification):
    """No id validation: index_put_ wraps -1 around to the last class."""

    def _validate(self, pred, true, k):
        return None

    def _add(self, pred, true, k):
        self._grow(k)
        ones = torch.ones_like(true)
        self.cm.index_put_((true, pred), ones, accumulate=True)


class _ClampedTargets(_ToyClassification):
    """Target ids forced into [0, K) before validation: a label of K counts as class K - 1."""

    def _ids(self, y_pred, y_true):
        k = self.num_classes or (y_pred.shape[1] if y_pred.dim() == 2 else None)
        return super()._ids(y_pred, y_true if k is None else y_true.clamp(0, k - 1))


class _AliasingMerge(_ToyClassification):
    """An empty state adopts the other's matrix by reference; later updates write into it."""

    def merge(self, other):
        if int(self.cm.sum()) == 0 and self.cm.shape[0] <= other.cm.shape[0]:
            self.cm = other.cm
            return self
        return super().merge(other)


class _ArgminLogProbs(_ToyClassification):
    """[B, K] predictions are decoded with argmin: wrong class whenever K > 1."""

    def _ids(self, y_pred, y_true):
        if y_pred.dim() == 2:
            y_pred = -y_pred
        return super()._ids(y_pred, y_true)


class _MaskMultiply(_ToyCount):
    """Masking by multiplication: NaN * 0 = NaN leaks padding garbage."""

    def _diff(self, count_pred, count_true, mask):
        super()._diff(count_pred, count_true, mask)
        valid = (mask != 0).unsqueeze(-1)
        return (count_pred.double() - count_true.double()) * valid, valid


class _MergeDrainsOther(_ToyCount):
    """merge moves the other's sums instead of copying them (the other is reset)."""

    def merge(self, other):
        super().merge(other)
        other.reset()
        return self


class _KeepsAllData(_ToyCount):
    """Keeps every batch for compute(): memory grows with the data."""

    def reset(self):
        super().reset()
        self.batches = []

    def update(self, count_pred, count_true, mask):
        super().update(count_pred, count_true, mask)
        self.batches.append((count_pred.clone(), count_true.clone(), mask.clone()))


class _KeepsIdsWithoutK(_ToyClassification):
    """Without num_classes, keeps every batch to infer K: memory grows with the data."""

    def reset(self):
        super().reset()
        self.kept = []

    def update(self, y_pred, y_true):
        super().update(y_pred, y_true)
        if self.num_classes is None:
            self.kept.append((y_pred.clone(), y_true.clone()))


class _NoCountCheck(_ToyCount):
    """Masks are broadcast instead of compared: a wider mask is silently sliced."""

    def _diff(self, count_pred, count_true, mask):
        mask = mask[:, : count_pred.shape[1]]
        n = min(count_pred.shape[0], count_true.shape[0])
        return super()._diff(count_pred[:n], count_true[:n], mask[:n])


# --------------------------------------------------------------------------- helpers


def _kill(check, strategy, target: MetricsTarget, rule: str, **kwargs: Any) -> ContractViolation:
    """Search with the profile's example budget; any failing example proves the kill."""

    # No shrinking: the minimal example is irrelevant here and shrinking tensors costs seconds.
    @settings(phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False)
    @given(case=strategy)
    def search(case):
        if isinstance(case, tuple):
            check(target, case[0], partition=case[1], **kwargs)
        else:
            check(target, case, **kwargs)

    with pytest.raises(ContractViolation) as info:
        search()
    assert info.value.rule == rule, str(info.value)
    return info.value


@pytest.fixture(scope="module")
def aam_metrics() -> MetricsTarget:
    return load_metrics_target("aam.training.metrics")


REG = regression_data()
CLS = classification_data()
CNT = count_data()
OFFSET = partitioned(regression_data(kind="offset", min_size=2))

# --------------------------------------------------------------------------- mutants die


@pytest.mark.parametrize(
    ("cls", "strategy", "metric"),
    [
        pytest.param(
            {"StreamingRegressionMetrics": _HalfPrecisionSums}, REG, "regression", id="half-sums"
        ),
        pytest.param(
            {"StreamingClassificationMetrics": _ArgminLogProbs}, CLS, "classification", id="argmin"
        ),
        pytest.param({"StreamingCountMetrics": _MaskMultiply}, CNT, "count", id="mask-multiply"),
    ],
)
def test_reference_check_kills(cls, strategy, metric):
    _kill(check_metric_reference, strategy, _toy(**cls), "C-METRIC-REF-1", metric=metric)


@pytest.mark.parametrize(
    ("cls", "metric", "case", "strategy"),
    [
        pytest.param(
            {"StreamingClassificationMetrics": _WrappingIds},
            "classification",
            "negative_true",
            classification_data(min_batch=1),
            id="wrap-negative-true",
        ),
        pytest.param(
            {"StreamingClassificationMetrics": _WrappingIds},
            "classification",
            "pred_out_of_range",
            classification_data(min_batch=1, pred_form="ids", num_classes_given=True),
            id="wrap-pred-too-large",
        ),
        pytest.param(
            {"StreamingClassificationMetrics": _ClampedTargets},
            "classification",
            "true_out_of_range",
            classification_data(min_batch=1, num_classes_given=True),
            id="clamp-true-too-large",
        ),
        pytest.param(
            {"StreamingRegressionMetrics": _Truncating},
            "regression",
            "length_mismatch",
            REG,
            id="truncate",
        ),
        pytest.param(
            {"StreamingCountMetrics": _NoCountCheck}, "count", "mask_mismatch", CNT, id="slice-mask"
        ),
    ],
)
def test_input_check_kills(cls, metric, case, strategy):
    violation = _kill(
        check_metric_input_validation,
        strategy,
        _toy(**cls),
        "C-METRIC-INPUT-1",
        metric=metric,
        case=case,
    )
    assert case in str(violation)


@pytest.mark.parametrize("case", sorted(ID_CASES))
@pytest.mark.parametrize("pred_form", ["ids", "log_probs"])
def test_each_id_case_corrupts_exactly_the_tensor_it_names(case, pred_form):
    named, side = ID_CASES[case]
    assert named == ("y_true" if "true" in case else "y_pred")
    assert side == ("negative" if case.startswith("negative") else "high")
    pred = torch.tensor([0, 2, 1]) if pred_form == "ids" else torch.eye(3).log_softmax(dim=1)
    data = ClassificationData(pred, torch.tensor([1, 1, 2]), 3)
    if _input_case_usable(data, case):
        assert named == "y_pred"
        assert pred_form == "log_probs"
        return
    bad, what = _bad_input(data, case, 4, 1)
    changed = {
        name: int((getattr(bad, name) != getattr(data, name)).sum())
        for name in ("y_true", "y_pred")
    }
    assert changed == {named: 1, ({"y_true", "y_pred"} - {named}).pop(): 0}
    assert getattr(bad, named).reshape(-1)[1] == (-2 if side == "negative" else 4)
    assert what.startswith(f"{named}[1] = ")


def test_out_of_range_cases_need_num_classes():
    # Without num_classes K is only inferred (from the ids, or grown past the log-prob width),
    # so no id is out of range by any documented rule.
    for pred in (torch.tensor([0, 1]), torch.zeros(2, 3)):
        data = ClassificationData(pred, torch.tensor([0, 1]), None)
        assert "num_classes" in _input_case_usable(data, "true_out_of_range")
    ids = ClassificationData(torch.tensor([0, 1]), torch.tensor([0, 1]), None)
    assert "num_classes" in _input_case_usable(ids, "pred_out_of_range")
    assert _input_case_usable(ids, "negative_true") is None


def test_input_check_rejects_cases_it_cannot_build():
    data = ClassificationData(torch.tensor([[0.0, -1.0]]), torch.tensor([0]), None)
    with pytest.raises(HarnessUsageError, match="needs predictions given as"):
        check_metric_input_validation(_toy(), data, metric="classification", case="negative_pred")
    with pytest.raises(HarnessUsageError, match="case for regression"):
        check_metric_input_validation(
            _toy(), RegressionData(torch.ones(1), torch.ones(1)), metric="regression", case="x"
        )


def test_edge_check_kills_unguarded_constant_r2():
    target = _toy(StreamingRegressionMetrics=_UnguardedR2)
    strategy = regression_data(kind=("constant", "single", "empty"))
    violation = _kill(
        check_metric_edge_cases, strategy, target, "C-METRIC-EDGE-1", metric="regression"
    )
    assert violation.term == "regression.r2"


def test_edge_check_kills_nan_for_empty_data():
    class EmptyNaN(_ToyCount):
        def compute(self):
            return {"mae": self.abs / self.n if self.n else math.nan, "mse": 0.0}

    _kill(
        check_metric_edge_cases,
        count_data(),
        _toy(StreamingCountMetrics=EmptyNaN),
        "C-METRIC-EDGE-1",
        metric="count",
    )


@pytest.mark.parametrize(
    ("cls", "metric", "strategy"),
    [
        pytest.param(
            {"StreamingRegressionMetrics": _EmptyBatchNaN},
            "regression",
            partitioned(REG),
            id="empty-batch-nan",
        ),
        pytest.param(
            {"StreamingRegressionMetrics": _ResetKeepsCount},
            "regression",
            partitioned(regression_data(min_size=1)),
            id="reset-keeps-count",
        ),
    ],
)
def test_partition_check_kills(cls, metric, strategy):
    _kill(check_stream_partition, strategy, _toy(**cls), "C-STREAM-1", metric=metric)


@pytest.mark.parametrize(
    ("cls", "metric", "strategy", "headline"),
    [
        pytest.param(
            {"StreamingRegressionMetrics": _MeanOfMeansMerge},
            "regression",
            partitioned(regression_data(kind="ordinary", min_size=3), min_batches=3),
            "",
            id="mean-of-means",
        ),
        pytest.param(
            {"StreamingClassificationMetrics": _AliasingMerge},
            "classification",
            partitioned(classification_data(min_batch=3)),
            "changed the other state",
            id="aliasing",
        ),
        pytest.param(
            {"StreamingCountMetrics": _MergeDrainsOther},
            "count",
            partitioned(count_data(min_batch=2)),
            "changed the other state",
            id="drains-other",
        ),
    ],
)
def test_merge_check_kills(cls, metric, strategy, headline):
    violation = _kill(check_stream_merge, strategy, _toy(**cls), "C-STREAM-2", metric=metric)
    assert headline in violation.headline


def test_stability_check_kills_naive_sum_of_squares():
    target = _toy(StreamingRegressionMetrics=_NaiveR2)
    violation = _kill(check_stream_stability, OFFSET, target, "C-STREAM-3")
    assert violation.term == "regression.r2"


def test_vectorized_check_kills_a_per_element_loop():
    target = _toy(StreamingRegressionMetrics=_PerElementLoop)
    with pytest.raises(ContractViolation, match="per element") as info:
        check_stream_vectorized(target, metric="regression")
    assert info.value.rule == "C-STREAM-4"


def test_vectorized_check_kills_a_state_that_keeps_the_data():
    target = _toy(StreamingCountMetrics=_KeepsAllData)
    with pytest.raises(ContractViolation, match="grows with the data") as info:
        check_stream_vectorized(target, metric="count")
    assert info.value.rule == "C-STREAM-4"


def test_vectorized_check_kills_a_class_state_that_keeps_batches_without_num_classes():
    # With num_classes=4 the state is a fixed [4, 4] matrix; only the num_classes=None
    # measurement (ids whose classes arrive over many batches) sees the kept batches.
    target = _toy(StreamingClassificationMetrics=_KeepsIdsWithoutK)
    with pytest.raises(ContractViolation, match="grows with the data") as info:
        check_stream_vectorized(target, metric="classification")
    assert info.value.rule == "C-STREAM-4"
    assert "num_classes=None" in info.value.headline
    assert "num_classes=None" in str(info.value.details["configuration"])


# --------------------------------------------------------------------------- correct code passes


_PASSING = [
    (check_metric_reference, REG, {"metric": "regression"}),
    (check_metric_reference, CLS, {"metric": "classification"}),
    (check_metric_reference, CNT, {"metric": "count"}),
    (
        check_metric_edge_cases,
        regression_data(kind=("constant", "single", "empty")),
        {"metric": "regression"},
    ),
    (check_metric_edge_cases, CLS, {"metric": "classification"}),
    (check_metric_edge_cases, CNT, {"metric": "count"}),
    (check_stream_partition, partitioned(REG), {"metric": "regression"}),
    (check_stream_partition, partitioned(CLS), {"metric": "classification"}),
    (check_stream_partition, partitioned(CNT), {"metric": "count"}),
    (check_stream_merge, partitioned(REG), {"metric": "regression"}),
    (check_stream_merge, partitioned(CLS), {"metric": "classification"}),
    (check_stream_merge, partitioned(CNT), {"metric": "count"}),
    (check_stream_stability, OFFSET, {}),
]


@pytest.mark.parametrize(
    ("check", "strategy", "kwargs"),
    [pytest.param(*p, id=f"{p[0].__name__}-{p[2].get('metric', 'regression')}") for p in _PASSING],
)
def test_checks_pass_on_the_toy(check, strategy, kwargs):
    target = _toy()

    @given(case=strategy)
    def run(case):
        if isinstance(case, tuple):
            check(target, case[0], partition=case[1], **kwargs)
        else:
            check(target, case, **kwargs)

    run()


@pytest.mark.parametrize("metric", ["regression", "classification", "count"])
def test_vectorized_check_passes_on_the_toy(metric):
    check_stream_vectorized(_toy(), metric=metric)


@pytest.mark.parametrize(
    ("metric", "case", "data"),
    [
        ("regression", "length_mismatch", RegressionData(torch.ones(3), torch.ones(3))),
        (
            "count",
            "length_mismatch",
            CountData(torch.ones(2, 3, 1), torch.ones(2, 3, 1), torch.ones(2, 3)),
        ),
        (
            "count",
            "mask_mismatch",
            CountData(torch.ones(2, 3, 1), torch.ones(2, 3, 1), torch.ones(2, 3)),
        ),
        *[
            (
                "classification",
                case,
                ClassificationData(torch.tensor([0, 2, 1]), torch.tensor([1, 1, 2]), 3),
            )
            for case in INPUT_CASES["classification"]
        ],
    ],
)
def test_input_check_passes_on_the_toy(metric, case, data):
    check_metric_input_validation(_toy(), data, metric=metric, case=case)


# --------------------------------------------------------------------------- the checks on aam


@pytest.mark.parametrize(
    ("check", "strategy", "kwargs"),
    [pytest.param(*p, id=f"{p[0].__name__}-{p[2].get('metric', 'regression')}") for p in _PASSING],
)
def test_checks_pass_on_aam(aam_metrics, check, strategy, kwargs):
    @given(case=strategy)
    def run(case):
        if isinstance(case, tuple):
            check(aam_metrics, case[0], partition=case[1], **kwargs)
        else:
            check(aam_metrics, case, **kwargs)

    run()


@pytest.mark.parametrize("metric", ["regression", "classification", "count"])
def test_vectorized_check_passes_on_aam(aam_metrics, metric):
    check_stream_vectorized(aam_metrics, metric=metric)


# --------------------------------------------------------------------------- violations replay


def test_violation_carries_a_replayable_spec():
    target = _toy(StreamingRegressionMetrics=_UnguardedR2)
    data = RegressionData(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]), "constant")
    with pytest.raises(ContractViolation) as info:
        check_metric_edge_cases(target, data, metric="regression")
    replay = info.value.replay
    assert replay is not None
    assert replay.check.endswith(":check_metric_edge_cases")
    assert replay.kind == "metrics"
    args = from_plain(replay.args)
    assert isinstance(args["data"], RegressionData)
    with pytest.raises(ContractViolation):
        check_metric_edge_cases(target, **args)


# --------------------------------------------------------------------------- strategies


@given(case=regression_data(dtype=torch.bfloat16))
def test_bfloat16_values_are_exact(case):
    for t in case.args():
        assert t.dtype == torch.bfloat16
        as32 = t.float()
        assert torch.equal(as32.to(torch.bfloat16).float(), as32)


@given(case=regression_data())
def test_regression_data_flattens_to_equal_lengths(case):
    assert case.y_pred.numel() == case.y_true.numel()
    assert case.y_pred.dtype == case.y_true.dtype
    assert torch.isfinite(case.y_pred.double()).all()
    if case.kind == "offset":
        assert case.dtype == torch.float64


@given(case=count_data(garbage=True))
def test_count_data_holds_garbage_only_at_padding(case):
    valid = case.valid.unsqueeze(-1)
    assert case.count_pred.shape == case.count_true.shape == (*case.mask.shape, 1)
    assert torch.isfinite(case.count_pred.double()[valid.expand_as(case.count_pred)]).all()


@given(case=classification_data())
def test_classification_log_probs_have_a_unique_maximum(case):
    if case.pred_form == "log_probs" and case.n_rows:
        top = case.y_pred.double().max(dim=1, keepdim=True).values
        assert ((case.y_pred.double() == top).sum(dim=1) == 1).all()
    assert (case.y_true >= 0).all()
    assert (case.y_true < case.k).all()


@given(st.integers(0, 40).flatmap(lambda n: st.tuples(st.just(n), partitions(n))))
def test_partitions_cover_every_item_once(n_and_partition):
    n, partition = n_and_partition
    assert partition.total == n
    assert all(s >= 0 for s in partition.sizes)
    assert [b - a for a, b in partition.bounds()] == list(partition.sizes)


@pytest.mark.parametrize(
    "strategy", [REG, CLS, CNT, partitions(7)], ids=["reg", "cls", "cnt", "part"]
)
def test_cases_round_trip_through_plain_data(strategy, tmp_path):
    @given(case=strategy)
    def run(case):
        path = tmp_path / "case.pt"
        torch.save(to_plain({"case": case}), path)
        back = from_plain(torch.load(path, weights_only=True))["case"]
        assert type(back) is type(case)
        assert back.describe() == case.describe()

    run()


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        pytest.param(regression_data, {"kind": "weird"}, "kind must be among", id="kind"),
        pytest.param(regression_data, {"dtype": torch.int64}, "dtype must be one of", id="dtype"),
        pytest.param(regression_data, {"min_size": 5, "max_size": 2}, "min_size", id="sizes"),
        pytest.param(
            regression_data, {"kind": "offset", "dtype": torch.float32}, "float64", id="offset"
        ),
        pytest.param(classification_data, {"pred_form": "probs"}, "pred_form", id="form"),
        pytest.param(classification_data, {"max_classes": 0}, "max_classes", id="classes"),
        pytest.param(count_data, {"mask_dtype": torch.float16}, "mask_dtype", id="mask"),
        pytest.param(partitions, {"n": -1}, "n >= 0", id="partition"),
    ],
)
def test_strategy_arguments_are_validated(factory, kwargs, match):
    with pytest.raises(HarnessUsageError, match=match):
        factory(**kwargs)


# --------------------------------------------------------------------------- references


sklearn_metrics = pytest.importorskip("sklearn.metrics")


@given(case=regression_data(kind=("ordinary", "offset"), min_size=2))
def test_regression_reference_matches_sklearn(case):
    true = case.y_true.double().reshape(-1).numpy()
    pred = case.y_pred.double().reshape(-1).numpy()
    ref = reference_regression_metrics(case.y_pred, case.y_true)
    assert ref["mae"] == pytest.approx(
        sklearn_metrics.mean_absolute_error(true, pred), rel=1e-12, abs=0
    )
    assert ref["mse"] == pytest.approx(
        sklearn_metrics.mean_squared_error(true, pred), rel=1e-12, abs=0
    )
    if np.all(true == true[0]):
        return  # sklearn's own mean leaves a rounding residue here; see the constant test
    sk = sklearn_metrics.r2_score(true, pred)
    assert ref["r2"] == pytest.approx(sk, rel=1e-9, abs=1e-9 * abs(1 - sk))


@pytest.mark.parametrize(
    ("pred", "true", "r2"),
    [
        ([3.0, 3.0, 3.0], [3.0, 3.0, 3.0], 1.0),
        ([3.0, 3.0, 2.0], [3.0, 3.0, 3.0], 0.0),
        ([0.1, 0.1, 0.1], [0.1, 0.1, 0.1], 1.0),
        ([0.1, 0.1, 0.2], [0.1, 0.1, 0.1], 0.0),
        ([5.0], [4.0], 0.0),
        ([4.0], [4.0], 1.0),
        ([], [], 0.0),
    ],
)
def test_r2_reference_constant_targets(pred, true, r2):
    assert reference_r2(np.array(pred), np.array(true)) == r2
    if len(true) >= 2 and true[0] != 0.1:
        assert sklearn_metrics.r2_score(true, pred) == r2


# sklearn warns that a single label cannot size the matrix, although labels= is given.
@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
@given(case=classification_data(min_batch=1))
def test_classification_reference_matches_sklearn(case):
    ref = reference_classification_metrics(case.y_pred, case.y_true, case.num_classes)
    true, pred = case.y_true.numpy(), case.pred_ids.numpy()
    labels = list(range(case.k))
    assert ref["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(true, pred), abs=1e-15)
    for name, fn in [
        ("precision", sklearn_metrics.precision_score),
        ("recall", sklearn_metrics.recall_score),
        ("f1", sklearn_metrics.f1_score),
    ]:
        expected = fn(true, pred, labels=labels, average="weighted", zero_division=0)
        assert ref[name] == pytest.approx(expected, abs=1e-15), name
    cm = sklearn_metrics.confusion_matrix(true, pred, labels=labels)
    assert np.array_equal(ref["confusion_matrix"], cm)


@given(case=count_data())
def test_count_reference_matches_selected_positions(case):
    valid = case.valid.numpy()
    pred = case.count_pred[..., 0].double().numpy()[valid]
    true = case.count_true[..., 0].double().numpy()[valid]
    ref = reference_count_metrics(*case.args())
    if valid.any():
        assert ref["mae"] == pytest.approx(
            sklearn_metrics.mean_absolute_error(true, pred), rel=1e-12
        )
        assert ref["mse"] == pytest.approx(
            sklearn_metrics.mean_squared_error(true, pred), rel=1e-12
        )
    else:
        assert ref == {"mae": 0.0, "mse": 0.0}


def test_the_harness_does_not_import_sklearn():
    import subprocess

    code = (
        "import sys, robustness.properties._metrics, robustness.strategies._metric_data;"
        "sys.exit('sklearn' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------------------- messages


class _NanPrecision(_ToyClassification):
    """Precision as tp / predicted with no zero_division guard: NaN for a never-predicted class."""

    def compute(self):
        out = super().compute()
        cm = self.cm.double()
        n = float(cm.sum())
        if n:
            tp, support, predicted = cm.diagonal(), cm.sum(1), cm.sum(0)
            out["precision"] = float(((tp / predicted) * support).sum() / n)
        return out


def test_merge_check_names_nan_where_a_number_is_owed():
    # Class 2 is never predicted: precision owes 0.0 for it. Both merge orders give NaN, so
    # "merge is not commutative ... precision = nan, expected nan" would blame the merge.
    data = ClassificationData(torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 1, 2, 1, 0, 2]), 3)
    with pytest.raises(ContractViolation) as info:
        check_stream_merge(
            _toy(StreamingClassificationMetrics=_NanPrecision),
            data,
            metric="classification",
            partition=Partition((2, 4)),
        )
    violation = info.value
    assert violation.rule == "C-STREAM-2"
    assert violation.term == "classification.precision"
    assert "precision = nan where the float64 reference is 0." in violation.headline
    assert "not commutative" not in violation.headline
