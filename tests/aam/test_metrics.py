"""Tests of aam.training.metrics against scikit-learn and float64 NumPy oracles.

scikit-learn (a test-only dependency) is the oracle for classification and R²; float64 NumPy on
the boolean-indexed valid subset for MAE/MSE and the count metrics. Inputs are drawn with
seeded NumPy generators (deterministic, so a failure always reproduces) and built on the cpu,
then moved to ``contract_device``.

The module is used through attribute access (``M.compute_regression_metrics``), so the last
section can swap a deliberately broken variant into it and prove that each property test fails
on the bug it exists to catch.
"""

from __future__ import annotations

import inspect
import itertools
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)

from aam.training import metrics as M
from robustness.tolerances import tolerance

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
NAN, INF = math.nan, math.inf
SEEDS = range(6)
FAMILIES = ("regression", "classification", "count")


# --------------------------------------------------------------------------- data


def _tensor(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A ``dtype`` tensor of float64 values (rounded once, here, so oracles see held values)."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(dtype)


def _held(t: torch.Tensor) -> np.ndarray:
    """The values a tensor holds, exactly, as flat float64 NumPy."""
    return t.detach().cpu().to(F64).reshape(-1).numpy()


@dataclass
class RegressionCase:
    y_pred: torch.Tensor
    y_true: torch.Tensor

    def args(self) -> tuple[torch.Tensor, ...]:
        return (self.y_pred, self.y_true)

    def rows(self, a: int, b: int) -> RegressionCase:
        return RegressionCase(self.y_pred.reshape(-1)[a:b], self.y_true.reshape(-1)[a:b])

    @property
    def n_rows(self) -> int:
        return self.y_true.numel()

    def to(self, device: str) -> RegressionCase:
        return RegressionCase(self.y_pred.to(device), self.y_true.to(device))


@dataclass
class ClassificationCase:
    y_pred: torch.Tensor
    y_true: torch.Tensor
    num_classes: int | None

    def args(self) -> tuple[torch.Tensor, ...]:
        return (self.y_pred, self.y_true)

    def rows(self, a: int, b: int) -> ClassificationCase:
        return ClassificationCase(self.y_pred[a:b], self.y_true[a:b], self.num_classes)

    @property
    def n_rows(self) -> int:
        return self.y_true.shape[0]

    def to(self, device: str) -> ClassificationCase:
        return ClassificationCase(self.y_pred.to(device), self.y_true.to(device), self.num_classes)


@dataclass
class CountCase:
    count_pred: torch.Tensor
    count_true: torch.Tensor
    mask: torch.Tensor

    def args(self) -> tuple[torch.Tensor, ...]:
        return (self.count_pred, self.count_true, self.mask)

    def rows(self, a: int, b: int) -> CountCase:
        return CountCase(self.count_pred[a:b], self.count_true[a:b], self.mask[a:b])

    @property
    def n_rows(self) -> int:
        return self.count_true.shape[0]

    def to(self, device: str) -> CountCase:
        return CountCase(
            self.count_pred.to(device), self.count_true.to(device), self.mask.to(device)
        )


Case = RegressionCase | ClassificationCase | CountCase


def _regression(
    seed: int,
    dtype: torch.dtype = F32,
    *,
    n: int | None = None,
    offset: float = 0.0,
    scale: float = 10.0,
    noise: float = 3.0,
) -> RegressionCase:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200)) if n is None else n
    true = offset + scale * rng.standard_normal(n)
    pred = true + noise * rng.standard_normal(n)
    return RegressionCase(_tensor(pred, dtype), _tensor(true, dtype))


def _classification(
    seed: int,
    *,
    form: str = "ids",
    dtype: torch.dtype = F32,
    give_k: bool = True,
    b: int | None = None,
) -> ClassificationCase:
    """Imbalanced labels (Dirichlet class frequencies), usually with absent classes."""
    rng = np.random.default_rng(seed)
    b = int(rng.integers(1, 120)) if b is None else b
    k = int(rng.integers(2, 7))
    freq = rng.dirichlet(np.full(k, 0.4))
    true = rng.choice(k, size=b, p=freq)
    pred = np.where(rng.random(b) < 0.6, true, rng.integers(0, k, b))
    y_true = torch.from_numpy(true).to(torch.int64)
    if form == "ids":
        y_pred = torch.from_numpy(pred).to(torch.int64)
    else:
        scores = rng.normal(0.0, 3.0, size=(b, k))
        # A margin of 1 keeps the drawn class the unique maximum in every dtype.
        scores[np.arange(b), pred] = scores.max(axis=1) + 1.0
        y_pred = torch.log_softmax(torch.from_numpy(scores), dim=1).to(dtype)
    return ClassificationCase(y_pred, y_true, k if give_k else None)


def _count(seed: int, dtype: torch.dtype = F32, mask_dtype: torch.dtype = torch.bool) -> CountCase:
    """Ragged valid ASVs per sample; padded positions hold NaN, ±inf or finfo.max."""
    rng = np.random.default_rng(seed)
    b, a = int(rng.integers(1, 12)), int(rng.integers(1, 10))
    valid = np.arange(a)[None, :] < rng.integers(0, a + 1, size=(b, 1))
    true = rng.uniform(0, 100, size=(b, a))
    pred = true + rng.normal(0, 5, size=(b, a))
    garbage = np.array([NAN, INF, -INF, float(torch.finfo(dtype).max)])
    pred[~valid] = rng.choice(garbage, size=int((~valid).sum()))
    true[~valid] = rng.choice(garbage, size=int((~valid).sum()))
    return CountCase(
        _tensor(pred, dtype).unsqueeze(-1),
        _tensor(true, dtype).unsqueeze(-1),
        torch.from_numpy(valid).to(mask_dtype),
    )


def _partition(seed: int, n: int) -> list[tuple[int, int]]:
    """Ragged consecutive batches covering ``n`` rows, always with some empty batches."""
    rng = np.random.default_rng(1000 + seed)
    cuts = sorted(rng.integers(0, n + 1, size=int(rng.integers(0, 6))).tolist())
    edges = [0, 0, *cuts, n, n]  # empty first and last batches
    return list(itertools.pairwise(edges))


def _family_case(family: str, seed: int) -> Case:
    if family == "regression":
        return _regression(seed, F32)
    if family == "classification":
        form = "log_probs" if seed % 2 else "ids"
        return _classification(seed, form=form, give_k=seed % 3 == 0)
    return _count(seed, F32, (torch.bool, torch.int64, torch.float32)[seed % 3])


def _one_shot(family: str, case: Case) -> dict[str, Any]:
    if isinstance(case, RegressionCase):
        return M.compute_regression_metrics(*case.args())
    if isinstance(case, ClassificationCase):
        return M.compute_classification_metrics(*case.args(), num_classes=case.num_classes)
    return M.compute_count_metrics(*case.args())


def _state(family: str, case: Case | None = None) -> Any:
    if family == "regression":
        return M.StreamingRegressionMetrics()
    if family == "classification":
        k = case.num_classes if isinstance(case, ClassificationCase) else None
        return M.StreamingClassificationMetrics(num_classes=k)
    return M.StreamingCountMetrics()


def _fed(family: str, case: Case, bounds: list[tuple[int, int]]) -> Any:
    state = _state(family, case)
    for a, b in bounds:
        state.update(*case.rows(a, b).args())
    return state


# --------------------------------------------------------------------------- comparisons


def _assert_close(name: str, got: object, want: float, *, n: int, scale: float = 1.0) -> None:
    """``got`` is a Python float within the float64 tolerance of ``want``.

    The implementation computes in float64 from exactly converted inputs, so the float64
    tolerance applies whatever the input dtype.
    """
    __tracebackhide__ = True
    assert type(got) is float, f"{name} is a {type(got).__name__}, expected a Python float"
    tol = tolerance(F64, n=max(n, 1), scale=max(scale, abs(want)))
    assert math.isfinite(got), f"{name} = {got!r} is not finite"
    assert abs(got - want) <= tol.atol + tol.rtol * abs(want), (
        f"{name} = {got!r}, expected {want!r} (difference {abs(got - want):.3g}, {tol.describe()})"
    )


def _r2_scale(true: np.ndarray, r2: float) -> float:
    """What R²'s error scales with: |1 - R²| times the targets' variance condition number."""
    dev = true - true.mean()
    return abs(1.0 - r2) * (1.0 + math.sqrt(float(np.sum(true**2) / np.sum(dev**2))))


def _assert_same_results(got: dict[str, Any], want: dict[str, Any], *, n: int, what: str) -> None:
    __tracebackhide__ = True
    assert set(got) == set(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for key, value in want.items():
        if key == "confusion_matrix":
            assert torch.equal(got[key], value), f"{what}: confusion matrix {got[key]} != {value}"
        else:
            _assert_close(f"{what}: {key}", got[key], value, n=n)


# --------------------------------------------------------------------------- C-METRIC-REF-1


@pytest.mark.parametrize("dtype", [F64, F32, F16, BF16], ids=str)
@pytest.mark.parametrize("seed", SEEDS)
def test_regression_metrics_match_sklearn(contract_device, dtype, seed):
    case = _regression(seed, dtype, offset=50.0 * (seed % 3))
    pred, true = _held(case.y_pred), _held(case.y_true)
    # Different shapes that flatten to the same values, one of them a non-contiguous view.
    n = true.size
    y_pred = case.y_pred.reshape(n, 1)
    y_true = case.y_true.reshape(1, n).t().contiguous().t() if seed % 2 else case.y_true
    got = M.compute_regression_metrics(y_pred.to(contract_device), y_true.to(contract_device))
    want_r2 = r2_score(true, pred)
    _assert_close("mae", got["mae"], mean_absolute_error(true, pred), n=n)
    _assert_close("mse", got["mse"], mean_squared_error(true, pred), n=n)
    _assert_close("r2", got["r2"], want_r2, n=n, scale=_r2_scale(true, want_r2))


@pytest.mark.parametrize("form", ["log_probs", "ids"])
@pytest.mark.parametrize("give_k", [True, False], ids=["num_classes", "inferred_k"])
@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(contract_device, form, give_k, seed):
    dtype = (F64, F32, F16, BF16)[seed % 4]
    case = _classification(seed, form=form, dtype=dtype, give_k=give_k)
    true = case.y_true.numpy()
    if form == "log_probs":
        pred, k = case.y_pred.double().argmax(dim=1).numpy(), case.y_pred.shape[1]
    else:
        pred = case.y_pred.numpy()
        k = case.num_classes or int(max(true.max(), pred.max())) + 1
    on_device = case.to(contract_device)
    got = M.compute_classification_metrics(*on_device.args(), num_classes=case.num_classes)
    precision, recall, f1, _ = precision_recall_fscore_support(
        true, pred, average="weighted", zero_division=0
    )
    n = true.size
    _assert_close("accuracy", got["accuracy"], accuracy_score(true, pred), n=n)
    _assert_close("precision", got["precision"], float(precision), n=n)
    _assert_close("recall", got["recall"], float(recall), n=n)
    _assert_close("f1", got["f1"], float(f1), n=n)
    cm = got["confusion_matrix"]
    assert cm.dtype == torch.int64
    assert cm.device.type == "cpu"
    want_cm = confusion_matrix(true, pred, labels=np.arange(k))
    np.testing.assert_array_equal(cm.numpy(), want_cm)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32], ids=str)
@pytest.mark.parametrize("dtype", [F64, F32, F16, BF16], ids=str)
@pytest.mark.parametrize("seed", SEEDS)
def test_count_metrics_match_float64_reference_ignoring_padding_garbage(
    contract_device, dtype, mask_dtype, seed
):
    case = _count(seed, dtype, mask_dtype)
    valid = (case.mask != 0).reshape(-1).numpy()
    diff = _held(case.count_pred)[valid] - _held(case.count_true)[valid]
    got = M.compute_count_metrics(*case.to(contract_device).args())
    if diff.size == 0:
        assert got == {"mae": 0.0, "mse": 0.0}
        return
    _assert_close("mae", got["mae"], float(np.mean(np.abs(diff))), n=diff.size)
    _assert_close("mse", got["mse"], float(np.mean(diff**2)), n=diff.size)


# --------------------------------------------------------------------------- C-STREAM-3


@pytest.mark.parametrize("noise_scale", [1.0, 1e3])
@pytest.mark.parametrize("seed", SEEDS)
def test_r2_of_1e8_offset_targets_is_within_1e_6(contract_device, noise_scale, seed):
    offset = 1e8
    case = _regression(seed, F64, offset=offset, scale=noise_scale, noise=0.3 * noise_scale)
    # Exact oracle: 1e8 + x - 1e8 is exact here (Sterbenz), and R² is shift invariant.
    want = r2_score(_held(case.y_true) - offset, _held(case.y_pred) - offset)
    on_device = case.to(contract_device)
    bounds = _partition(seed, case.n_rows)
    half = len(bounds) // 2
    results = {
        "one-shot": M.compute_regression_metrics(*on_device.args()),
        "streamed": _fed("regression", on_device, bounds).compute(),
        "merged halves": _fed("regression", on_device, bounds[:half])
        .merge(_fed("regression", on_device, bounds[half:]))
        .compute(),
    }
    for how, got in results.items():
        assert abs(got["r2"] - want) <= 1e-6, f"{how}: R² = {got['r2']!r}, expected {want!r}"


@pytest.mark.parametrize("seed", SEEDS)
def test_r2_of_float32_targets_near_1e4_is_accurate(contract_device, seed):
    offset = 1e4
    case = _regression(seed, F32, n=1000, offset=offset, scale=1.0, noise=0.1)
    true, pred = _held(case.y_true) - offset, _held(case.y_pred) - offset  # exact shifts
    want = r2_score(true, pred)
    assert want > 0.95  # the data is what the test says: a good fit
    got = M.compute_regression_metrics(*case.to(contract_device).args())
    _assert_close("r2", got["r2"], want, n=true.size, scale=_r2_scale(true + offset, want))


# --------------------------------------------------------------------------- C-METRIC-EDGE-1


def _reg(pred: list[float], true: list[float], dtype: torch.dtype = F64) -> RegressionCase:
    return RegressionCase(torch.tensor(pred, dtype=dtype), torch.tensor(true, dtype=dtype))


@pytest.mark.parametrize(
    ("case", "want"),
    [
        pytest.param(_reg([2.0], [3.0]), {"mae": 1.0, "mse": 1.0, "r2": 0.0}, id="single-sample"),
        pytest.param(
            _reg([3.0], [3.0]), {"mae": 0.0, "mse": 0.0, "r2": 1.0}, id="single-sample-perfect"
        ),
        pytest.param(
            _reg([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]),
            {"mae": 0.0, "mse": 0.0, "r2": 1.0},
            id="constant-targets-perfect",
        ),
        pytest.param(
            _reg([0.75, 0.75, 0.75, 0.75], [0.5, 0.5, 0.5, 1.5]),
            {"mae": 0.375, "mse": 0.1875, "r2": 0.0},
            id="predicting-the-mean-of-non-constant-targets",
        ),
        pytest.param(
            _reg([0.1, 0.1, 0.2], [0.1, 0.1, 0.1]),
            {"r2": 0.0},
            id="constant-tenths-imperfect",
        ),
        pytest.param(
            RegressionCase(torch.zeros(0, 3), torch.zeros(2, 0)),
            {"mae": 0.0, "mse": 0.0, "r2": 0.0},
            id="no-data",
        ),
    ],
)
def test_regression_edge_cases_have_documented_results(contract_device, case, want):
    got = M.compute_regression_metrics(*case.to(contract_device).args())
    for key, value in want.items():
        assert got[key] == value, f"{key} = {got[key]!r}, documented {value!r}"
    assert all(math.isfinite(v) for v in got.values())


def _ids(pred: list[int], true: list[int], k: int | None) -> ClassificationCase:
    return ClassificationCase(torch.tensor(pred), torch.tensor(true), k)


# Classes 1 and 3 never occur; class 3 is never predicted either. By hand: support (3, 0, 1, 0),
# predicted (2, 0, 2, 0), tp (2, 0, 1, 0).
_ABSENT = _ids([0, 0, 2, 2], [0, 0, 0, 2], 4)
_ABSENT_WANT = {
    "accuracy": 0.75,
    "precision": (3 * 1.0 + 1 * 0.5) / 4,
    "recall": (3 * 2 / 3 + 1 * 1.0) / 4,
    "f1": (3 * 0.8 + 1 * (2 / 3)) / 4,
}


@pytest.mark.parametrize(
    ("case", "want", "cm_shape"),
    [
        pytest.param(_ABSENT, _ABSENT_WANT, (4, 4), id="absent-classes"),
        pytest.param(
            _ids([1, 1], [0, 0], 2),
            {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0},
            (2, 2),
            id="predicted-class-never-true",
        ),
        pytest.param(
            _ids([1], [1], None),
            {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0},
            (2, 2),
            id="single-sample-inferred-k",
        ),
        pytest.param(
            ClassificationCase(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), None),
            {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0},
            (3, 3),
            id="no-data-log-probs",
        ),
        pytest.param(
            _ids([], [], 5),
            {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0},
            (5, 5),
            id="no-data-num-classes",
        ),
        pytest.param(
            _ids([], [], None),
            {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0},
            (0, 0),
            id="no-data-no-classes",
        ),
    ],
)
def test_classification_edge_cases_have_documented_results(contract_device, case, want, cm_shape):
    got = M.compute_classification_metrics(
        *case.to(contract_device).args(), num_classes=case.num_classes
    )
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-15), f"{key} = {got[key]!r}, want {value}"
    assert tuple(got["confusion_matrix"].shape) == cm_shape
    if case.n_rows == 0:
        assert not got["confusion_matrix"].any()


@pytest.mark.parametrize("dtype", [F64, F32, F16, BF16], ids=str)
@pytest.mark.parametrize("seed", SEEDS)
def test_log_probs_and_their_argmax_ids_give_identical_results(contract_device, dtype, seed):
    case = _classification(seed, form="log_probs", dtype=dtype, give_k=bool(seed % 2))
    ids = case.y_pred.double().argmax(dim=1)
    k = case.y_pred.shape[1]
    from_scores = M.compute_classification_metrics(
        *case.to(contract_device).args(), num_classes=case.num_classes
    )
    from_ids = M.compute_classification_metrics(
        ids.to(contract_device), case.y_true.to(contract_device), num_classes=k
    )
    cm_scores, cm_ids = from_scores["confusion_matrix"], from_ids["confusion_matrix"]
    assert torch.equal(cm_scores, cm_ids), f"confusion matrix {cm_scores} from log-probs, {cm_ids}"
    for key in ("accuracy", "precision", "recall", "f1"):
        assert from_scores[key] == from_ids[key], f"{key}: {from_scores[key]} vs {from_ids[key]}"


@pytest.mark.parametrize(
    ("case", "want"),
    [
        pytest.param(
            CountCase(
                torch.tensor([[[NAN], [INF]]]),
                torch.tensor([[[NAN], [1.0]]]),
                torch.tensor([[0.0, 0.0]]),
            ),
            {"mae": 0.0, "mse": 0.0},
            id="no-valid-entries-with-garbage",
        ),
        pytest.param(
            CountCase(torch.zeros(0, 4, 1), torch.zeros(0, 4, 1), torch.zeros(0, 4, dtype=bool)),
            {"mae": 0.0, "mse": 0.0},
            id="no-samples",
        ),
        pytest.param(
            CountCase(
                torch.tensor([[[1.0], [-INF]], [[INF], [3.4e38]]]),
                torch.tensor([[[3.0], [NAN]], [[-3.4e38], [NAN]]]),
                torch.tensor([[1, 0], [0, 0]]),
            ),
            {"mae": 2.0, "mse": 4.0},
            id="single-valid-entry-among-garbage",
        ),
    ],
)
def test_count_edge_cases_have_documented_results(contract_device, case, want):
    assert M.compute_count_metrics(*case.to(contract_device).args()) == want


_KEYS = {
    "regression": ("mae", "mse", "r2"),
    "classification": ("accuracy", "precision", "recall", "f1"),
    "count": ("mae", "mse"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_state_computes_zeros(family):
    got = _state(family).compute()
    assert {k: v for k, v in got.items() if k != "confusion_matrix"} == dict.fromkeys(
        _KEYS[family], 0.0
    )


# --------------------------------------------------------------------------- C-METRIC-INPUT-1


@dataclass(frozen=True)
class Bad:
    """A bad call: the family, a builder of its cpu arguments, ``num_classes``, the message."""

    family: str
    build: Callable[[], tuple[torch.Tensor, ...]]
    match: str
    num_classes: Any = None


def _t(*values: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


_LOG_PROBS = torch.log_softmax(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]]), dim=1)
_BAD = {
    "regression-element-counts-differ": Bad(
        "regression", lambda: (torch.zeros(3), torch.zeros(4)), r"y_pred shape \(3,\).*\(4,\)"
    ),
    "regression-shapes-[3,1]-vs-[3,2]": Bad(
        "regression", lambda: (torch.zeros(3, 1), torch.zeros(3, 2)), r"\(3, 1\).*\(3, 2\)"
    ),
    "regression-nan-in-y_pred": Bad(
        "regression", lambda: (_t(1.0, NAN, 2.0), torch.ones(3)), r"y_pred has 1 non-finite"
    ),
    "regression-inf-in-y_true": Bad(
        "regression", lambda: (torch.ones(3), _t(INF, 0.0, -INF)), r"y_true has 2 non-finite"
    ),
    "classification-negative-true-id": Bad(
        "classification", lambda: (_t(0, 1, 2), _t(2, -1, 0)), r"y_true .*outside \[0, 3\)", 3
    ),
    "classification-negative-pred-id": Bad(
        "classification", lambda: (_t(0, -1, 2), _t(2, 1, 0)), r"y_pred .*outside \[0, 3\)", 3
    ),
    "classification-true-id-equals-num_classes": Bad(
        "classification", lambda: (_t(0, 1, 2), _t(3, 1, 0)), r"y_true .*outside \[0, 3\)", 3
    ),
    "classification-pred-id-beyond-num_classes": Bad(
        "classification", lambda: (_t(0, 5, 2), _t(2, 1, 0)), r"y_pred .*outside \[0, 3\)", 3
    ),
    "classification-negative-true-id-inferred-k": Bad(
        "classification", lambda: (_t(0, 1, 2), _t(0, 1, -2)), r"y_true .*outside"
    ),
    "classification-true-id-beyond-log-prob-width": Bad(
        "classification", lambda: (_LOG_PROBS, _t(0, 2, 1)), r"y_true .*outside \[0, 2\)"
    ),
    "classification-negative-true-id-with-log-probs": Bad(
        "classification", lambda: (_LOG_PROBS, _t(0, -1, 1)), r"y_true .*outside \[0, 2\)"
    ),
    "classification-lengths-differ-ids": Bad(
        "classification", lambda: (_t(0, 1, 2), _t(0, 1, 2, 0)), r"3 sample\(s\).* 4", 3
    ),
    "classification-lengths-differ-log-probs": Bad(
        "classification", lambda: (_LOG_PROBS, _t(0, 1)), r"3 sample\(s\).* 2"
    ),
    "classification-width-differs-from-num_classes": Bad(
        "classification", lambda: (_LOG_PROBS, _t(0, 1, 1)), r"2 class column\(s\).*=3", 3
    ),
    "classification-non-integral-float-ids": Bad(
        "classification", lambda: (_t(0.0, 1.5, 2.0), _t(0, 1, 2)), r"y_pred must hold integral"
    ),
    "classification-nan-float-true-ids": Bad(
        "classification", lambda: (_t(0, 1, 2), _t(0.0, NAN, 1.0)), r"y_true has 1 non-finite"
    ),
    "classification-nan-scores": Bad(
        "classification",
        lambda: (_LOG_PROBS.clone().index_fill_(1, torch.tensor([1]), NAN), _t(0, 1, 1)),
        r"y_pred has 3 non-finite",
    ),
    "classification-[B,1]-targets": Bad(
        "classification", lambda: (_t(0, 1), _t([0], [1])), r"y_true must be \[B\].*squeeze"
    ),
    "classification-3d-predictions": Bad(
        "classification", lambda: (torch.zeros(2, 2, 2), _t(0, 1)), r"y_pred must be \[B, K\]"
    ),
    "classification-num_classes-zero": Bad(
        "classification", lambda: (_t(0), _t(0)), r"num_classes must be a positive", 0
    ),
    "classification-num_classes-bool": Bad(
        "classification", lambda: (_t(0), _t(0)), r"num_classes must be a positive", True
    ),
    "classification-num_classes-float": Bad(
        "classification", lambda: (_t(0), _t(0)), r"num_classes must be a positive", 2.0
    ),
    "count-true-shape-differs": Bad(
        "count",
        lambda: (torch.zeros(2, 3, 1), torch.zeros(3, 3, 1), torch.ones(2, 3)),
        r"count_true shape \(3, 3, 1\) does not match count_pred \(2, 3, 1\)",
    ),
    "count-mask-shape-differs": Bad(
        "count",
        lambda: (torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.ones(2, 4)),
        r"mask shape \(2, 4\) does not match count_pred \(2, 3, 1\)",
    ),
    "count-pred-without-trailing-1": Bad(
        "count",
        lambda: (torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)),
        r"count_pred must be \[B, A, 1\]",
    ),
    "count-nan-at-valid-pred": Bad(
        "count",
        lambda: (_t([[NAN], [NAN]]), _t([[1.0], [1.0]]), _t([True, False])),
        r"count_pred has 1 non-finite value\(s\) at valid positions",
    ),
    "count-inf-at-valid-true": Bad(
        "count",
        lambda: (_t([[1.0], [1.0]]), _t([[INF], [-INF]]), _t([1.0, 1.0])),
        r"count_true has 2 non-finite",
    ),
    "count-nan-in-mask": Bad(
        "count",
        lambda: (_t([[1.0], [1.0]]), _t([[1.0], [1.0]]), _t([1.0, NAN])),
        r"mask has 1 non-finite",
    ),
}


def _bad_call(face: str, bad: Bad, device: str) -> Any:
    args = tuple(a.to(device) for a in bad.build())
    kwargs = {} if bad.family != "classification" else {"num_classes": bad.num_classes}
    if face == "one-shot":
        fn = {
            "regression": M.compute_regression_metrics,
            "classification": M.compute_classification_metrics,
            "count": M.compute_count_metrics,
        }[bad.family]
        return fn(*args, **kwargs)
    cls = {
        "regression": M.StreamingRegressionMetrics,
        "classification": M.StreamingClassificationMetrics,
        "count": M.StreamingCountMetrics,
    }[bad.family]
    return cls(**kwargs).update(*args)


@pytest.mark.parametrize("face", ["one-shot", "update"])
@pytest.mark.parametrize("case", list(_BAD), ids=str)
def test_bad_input_raises_value_error_naming_the_problem(contract_device, face, case):
    with pytest.raises(ValueError, match=_BAD[case].match):
        _bad_call(face, _BAD[case], contract_device)


@pytest.mark.parametrize(
    ("family", "case"),
    [
        ("regression", "regression-nan-in-y_pred"),
        ("classification", "classification-pred-id-beyond-num_classes"),
        ("count", "count-nan-at-valid-pred"),
    ],
)
def test_rejected_update_leaves_the_state_unchanged(contract_device, family, case):
    data = _family_case(family, 3) if family != "classification" else _ids([0, 2, 1], [0, 1, 1], 3)
    data = data.to(contract_device)
    state = _fed(family, data, [(0, data.n_rows)])
    before = state.compute()
    with pytest.raises(ValueError, match=_BAD[case].match):
        state.update(*(a.to(contract_device) for a in _BAD[case].build()))
    _assert_same_results(state.compute(), before, n=data.n_rows, what="after a rejected update")


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"y_pred must be a torch\.Tensor, got list"):
        M.compute_regression_metrics([1.0, 2.0], torch.ones(2))


# --------------------------------------------------------------------------- C-STREAM-1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_streaming_over_ragged_batches_equals_one_shot(contract_device, family, seed):
    case = _family_case(family, seed).to(contract_device)
    bounds = _partition(seed, case.n_rows)
    whole = _one_shot(family, case)
    _assert_same_results(
        _fed(family, case, bounds).compute(), whole, n=case.n_rows, what=f"streamed {bounds}"
    )


def test_streaming_confusion_matrix_grows_as_new_ids_appear(contract_device):
    case = _ids([0, 1, 4, 2, 5], [0, 2, 4, 1, 3], None).to(contract_device)
    state = _fed("classification", case, [(0, 0), (0, 2), (2, 2), (2, 3), (3, 5)])
    got = state.compute()
    assert tuple(got["confusion_matrix"].shape) == (6, 6)
    _assert_same_results(got, _one_shot("classification", case), n=5, what="grown matrix")


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_forgets_everything(contract_device, family):
    first = _family_case(family, 1).to(contract_device)
    second = _family_case(family, 4).to(contract_device)
    if isinstance(second, ClassificationCase):
        first = ClassificationCase(first.y_pred, first.y_true, None)
        second = ClassificationCase(second.y_pred, second.y_true, None)
    state = _fed(family, first, [(0, first.n_rows)])
    state.reset()
    for a, b in _partition(5, second.n_rows):
        state.update(*second.rows(a, b).args())
    _assert_same_results(
        state.compute(), _one_shot(family, second), n=second.n_rows, what="after reset()"
    )


# --------------------------------------------------------------------------- C-STREAM-2


def _round_robin(family: str, case: Case, seed: int) -> list[Any]:
    bounds = _partition(seed, case.n_rows)
    return [_fed(family, case, bounds[g::3]) for g in range(3)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_merge_is_commutative_associative_and_equals_one_state(contract_device, family, seed):
    case = _family_case(family, seed).to(contract_device)
    n = case.n_rows

    def states() -> list[Any]:
        return _round_robin(family, case, seed)

    a, b, _ = states()
    ab = a.merge(b).compute()
    a, b, _ = states()
    ba = b.merge(a).compute()
    a, b, c = states()
    ab_c = a.merge(b).merge(c).compute()
    a, b, c = states()
    a_bc = a.merge(b.merge(c)).compute()
    single = _one_shot(family, case)
    _assert_same_results(ab, ba, n=n, what="A⊕B vs B⊕A")
    _assert_same_results(ab_c, a_bc, n=n, what="(A⊕B)⊕C vs A⊕(B⊕C)")
    _assert_same_results(ab_c, single, n=n, what="merged vs one state fed everything")
    if family != "regression":  # sums of counts and plain sums: exactly commutative
        assert {k: v for k, v in ab.items() if k != "confusion_matrix"} == {
            k: v for k, v in ba.items() if k != "confusion_matrix"
        }


@pytest.mark.parametrize("receiver", ["fed", "empty"])
@pytest.mark.parametrize("family", FAMILIES)
def test_merge_leaves_the_other_state_unchanged(contract_device, family, receiver):
    case = _family_case(family, 2).to(contract_device)
    a, b, _ = _round_robin(family, case, 2)
    if receiver == "empty":
        a = _state(family, case)
    before = b.compute()
    a.merge(b)
    _assert_same_results(b.compute(), before, n=case.n_rows, what="other after merge")
    a.update(*case.args())  # in-place updates of adopted tensors would show now
    _assert_same_results(b.compute(), before, n=case.n_rows, what="other after the merged update")


def test_merge_pads_confusion_matrices_to_the_larger_size(contract_device):
    case = _ids([0, 1, 2, 4, 0], [0, 2, 2, 1, 4], None).to(contract_device)
    small, large = _fed("classification", case, [(0, 3)]), _fed("classification", case, [(3, 5)])
    assert small.compute()["confusion_matrix"].shape == (3, 3)
    for merged in (small.merge(large), large.merge(_fed("classification", case, [(0, 3)]))):
        _assert_same_results(merged.compute(), _one_shot("classification", case), n=5, what="pad")


@pytest.mark.parametrize(
    ("state", "other", "error"),
    [
        pytest.param(
            M.StreamingRegressionMetrics, M.StreamingCountMetrics, TypeError, id="wrong-type"
        ),
        pytest.param(
            lambda: M.StreamingClassificationMetrics(3),
            lambda: M.StreamingClassificationMetrics(4),
            ValueError,
            id="num_classes-differ",
        ),
    ],
)
def test_merge_rejects_incompatible_states(state, other, error):
    with pytest.raises(error, match="merge"):
        state().merge(other())


def test_merge_rejects_more_classes_than_num_classes(contract_device):
    grown = _fed("classification", _ids([0, 4], [1, 3], None).to(contract_device), [(0, 2)])
    with pytest.raises(ValueError, match="seen 5 classes into one with num_classes=3"):
        M.StreamingClassificationMetrics(3).merge(grown)


# --------------------------------------------------------------------------- C-STREAM-4


def _batch(family: str, n: int, seed: int) -> Case:
    """A batch of about ``n`` elements (count: ``n // 10`` samples of 10 ASVs)."""
    gen = torch.Generator().manual_seed(seed)
    if family == "regression":
        true = torch.randn(n, generator=gen)
        return RegressionCase(true + torch.randn(n, generator=gen), true)
    if family == "classification":
        scores = torch.randn(n, 4, generator=gen)
        return ClassificationCase(scores, torch.randint(0, 4, (n,), generator=gen), None)
    b = max(n // 10, 1)
    true = torch.rand(b, 10, 1, generator=gen) * 10
    return CountCase(true + torch.randn(b, 10, 1, generator=gen), true, torch.rand(b, 10) > 0.3)


def _state_bytes(obj: Any) -> int:
    """Bytes of every tensor reachable from a state's attributes, plus 8 per container item."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(8 + _state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(8 + _state_bytes(v) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return _state_bytes(vars(obj))
    return 0


@pytest.mark.parametrize("family", FAMILIES)
def test_state_memory_is_independent_of_data_size(contract_device, family):
    batch = _batch(family, 500, seed=0).to(contract_device)
    sizes = []
    for batches in (2, 40):
        state = _state(family)
        for _ in range(batches):
            state.update(*batch.args())
        sizes.append(_state_bytes(state))
    assert sizes[0] == sizes[1], f"state grew from {sizes[0]} to {sizes[1]} bytes with the data"


@contextmanager
def _lines_executed() -> Iterator[list[int]]:
    counter = [0]

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            counter[0] += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield counter
    finally:
        sys.settrace(previous)


@pytest.mark.parametrize("family", FAMILIES)
def test_update_runs_the_same_python_code_for_any_batch_size(contract_device, family):
    lines = []
    for n in (100, 10_000):
        batch = _batch(family, n, seed=n).to(contract_device)
        _state(family).update(*batch.args())  # warm-up: first-call paths inside torch
        state = _state(family)
        with _lines_executed() as counter:
            state.update(*batch.args())
        lines.append(counter[0])
    assert lines[1] - lines[0] <= 10, f"Python lines per update grew {lines} with the batch size"


# --------------------------------------------------------------------------- broken variants
#
# Each property test above must fail on the bug it exists to catch. A variant is swapped into the
# metrics module (the one-shot functions look the classes up there, so both faces are broken)
# and the test is run on the cpu; it must fail.


class _NaiveR2(M.StreamingRegressionMetrics):
    """R² from sum(y) and sum(y²) accumulated in the input dtype (torchmetrics' formula)."""

    def reset(self) -> None:
        super().reset()
        self._s1 = self._s2 = None

    def update(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        super().update(y_pred, y_true)
        t = y_true.reshape(-1)
        s1, s2 = t.sum(), (t * t).sum()
        self._s1 = s1 if self._s1 is None else self._s1 + s1
        self._s2 = s2 if self._s2 is None else self._s2 + s2

    def merge(self, other: Any) -> Any:
        super().merge(other)
        if other._s1 is not None:
            self._s1 = other._s1 if self._s1 is None else self._s1 + other._s1
            self._s2 = other._s2 if self._s2 is None else self._s2 + other._s2
        return self

    def compute(self) -> dict[str, float]:
        out = super().compute()
        if self._n > 1 and self._s1 is not None:
            ss_tot = float(self._s2 - self._s1 * self._s1 / self._n)
            out["r2"] = 1.0 - out["mse"] * self._n / ss_tot if ss_tot else 0.0
        return out


class _NoConstantRule(M.StreamingRegressionMetrics):
    def compute(self) -> dict[str, float]:
        out = super().compute()
        if self._n:
            out["r2"] = 1.0 - float(self._sq) / float(self._m2) if float(self._m2) else NAN
        return out


class _EqualWeightMerge(M.StreamingRegressionMetrics):
    """Chan's merge with the batch sizes ignored (means averaged, no n_a·n_b/n weight)."""

    def _combine(self, n, mean, m2, abs_sum, sq_sum, lo, hi):  # type: ignore[override]
        if self._n == 0:
            return super()._combine(n, mean, m2, abs_sum, sq_sum, lo, hi)
        delta = mean - self._mean
        self._mean = (self._mean + mean) / 2
        self._m2 = self._m2 + m2 + delta * delta / 4
        self._abs, self._sq = self._abs + abs_sum, self._sq + sq_sum
        self._lo, self._hi = torch.minimum(self._lo, lo), torch.maximum(self._hi, hi)
        self._n += n
        return None


class _NoEmptyGuard(M.StreamingRegressionMetrics):
    """Every batch is combined, an empty one too: its mean is 0/0 = NaN."""

    def update(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        pred, true = M._flat_pair(y_pred, y_true)
        mean = true.sum() / true.numel()
        diff = pred - true
        self._combine(
            true.numel(),
            mean,
            ((true - mean) ** 2).sum(),
            diff.abs().sum(),
            (diff * diff).sum(),
            torch.cat([true, self._lo.reshape(1)]).min(),
            torch.cat([true, self._hi.reshape(1)]).max(),
        )


class _TruncatingRegression(M.StreamingRegressionMetrics):
    def update(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        n = min(y_pred.numel(), y_true.numel())
        super().update(y_pred.reshape(-1)[:n], y_true.reshape(-1)[:n])


class _ResetKeepsData(M.StreamingRegressionMetrics):
    def reset(self) -> None:
        if not hasattr(self, "_n"):
            super().reset()


class _KeepsBatches(M.StreamingRegressionMetrics):
    def update(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        super().update(y_pred, y_true)
        self.__dict__.setdefault("_seen", []).append(y_true.clone())


class _PythonLoop(M.StreamingRegressionMetrics):
    def update(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        for p, t in zip(y_pred.reshape(-1), y_true.reshape(-1), strict=True):
            super().update(p.reshape(1), t.reshape(1))


class _NoDataNaN(M.StreamingRegressionMetrics):
    """Means of nothing: 0/0."""

    def compute(self) -> dict[str, float]:
        if self._n:
            return super().compute()
        return {"mae": NAN, "mse": NAN, "r2": NAN}


class _AcceptsLists(M.StreamingRegressionMetrics):
    def update(self, y_pred: Any, y_true: Any) -> None:
        super().update(torch.as_tensor(y_pred), torch.as_tensor(y_true))


class _WrapIds(M.StreamingClassificationMetrics):
    """Ids taken modulo K without a range check: -1 becomes the last class."""

    def _class_ids(self, y_pred: Any, y_true: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        k = self.num_classes or (y_pred.shape[1] if y_pred.dim() == 2 else 1)
        k = max(k, int(torch.cat([y_true.reshape(-1), y_pred.reshape(-1)]).long().max()) + 1)
        pred = y_pred.argmax(dim=1) if y_pred.dim() == 2 else y_pred.long()
        return pred % k, y_true.long() % k, k


class _MacroAverage(M.StreamingClassificationMetrics):
    """Unweighted mean over the classes present instead of the support-weighted mean."""

    def compute(self) -> dict[str, Any]:
        out = super().compute()
        cm = out["confusion_matrix"].double()
        present = (cm.sum(0) + cm.sum(1)) > 0
        if present.any():
            tp, predicted = cm.diagonal(), cm.sum(0)
            precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
            out["precision"] = float(precision[present].mean())
        return out


class _TransposedConfusion(M.StreamingClassificationMetrics):
    def compute(self) -> dict[str, Any]:
        out = super().compute()
        out["confusion_matrix"] = out["confusion_matrix"].t().contiguous()
        return out


class _Argmin(M.StreamingClassificationMetrics):
    def _class_ids(self, y_pred: Any, y_true: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        if y_pred.dim() == 2:
            y_pred = -y_pred
        return super()._class_ids(y_pred, y_true)


class _NoPadOnMerge(M.StreamingClassificationMetrics):
    def merge(self, other: Any) -> Any:
        self._cm = self._cm + other._cm
        return self


class _NoGrowth(M.StreamingClassificationMetrics):
    """The matrix keeps the size it was built with."""

    def _grown(self, k: int, device: torch.device) -> torch.Tensor:
        return self._cm.to(device)


class _MergeIgnoresNumClasses(M.StreamingClassificationMetrics):
    def merge(self, other: Any) -> Any:
        size = max(self._cm.shape[0], other._cm.shape[0])
        extra = size - other._cm.shape[0]
        self._cm = self._grown(size, self._cm.device) + F.pad(other._cm, (0, extra, 0, extra))
        return self


class _MergeAnything(M.StreamingRegressionMetrics):
    def merge(self, other: Any) -> Any:
        return self


class _MultiplyMask(M.StreamingCountMetrics):
    """Masks by multiplication: NaN · 0 is NaN, so padding garbage leaks in."""

    def update(self, count_pred: Any, count_true: Any, mask: Any) -> None:
        valid = (mask != 0).to(torch.float64)
        diff = (count_pred[..., 0].double() - count_true[..., 0].double()) * valid
        self._n = self._n + valid.sum().long()
        self._abs = self._abs + diff.abs().sum()
        self._sq = self._sq + (diff * diff).sum()


_REAL_COUNT = M.StreamingCountMetrics


class _AliasingMerge(M.StreamingCountMetrics):
    """Merging into an empty state adopts the other's tensors; updates are in place."""

    def merge(self, other: Any) -> Any:
        if int(self._n) == 0:
            self._n, self._abs, self._sq = other._n, other._abs, other._sq
            return self
        return super().merge(other)

    def update(self, count_pred: Any, count_true: Any, mask: Any) -> None:
        fresh = _REAL_COUNT()
        fresh.update(count_pred, count_true, mask)
        self._n += fresh._n
        self._abs += fresh._abs
        self._sq += fresh._sq


class _CountsBeforeValidating(M.StreamingCountMetrics):
    def update(self, count_pred: Any, count_true: Any, mask: Any) -> None:
        self._n = self._n + (mask != 0).sum()
        super().update(count_pred, count_true, mask)


def _no_nonfinite_check(t: torch.Tensor, valid: Any = None) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=t.device)


_CLASSES = {
    "regression": "StreamingRegressionMetrics",
    "classification": "StreamingClassificationMetrics",
    "count": "StreamingCountMetrics",
}


def _variant(attr: str, replacement: Any) -> dict[str, Any]:
    return {attr: replacement}


_FAILED = (AssertionError, pytest.fail.Exception)


@dataclass(frozen=True)
class Kill:
    """A broken variant (module attributes to replace), the test it must fail, and how."""

    patch: dict[str, Any]
    test: Callable[..., None]
    kwargs: dict[str, Any]
    # A failed assertion, or pytest.raises' "DID NOT RAISE" inside the killed test.
    failures: tuple[type[BaseException], ...] = _FAILED


_KILLS = {
    "naive-float64-sums-vs-1e8-offset": Kill(
        _variant(_CLASSES["regression"], _NaiveR2),
        test_r2_of_1e8_offset_targets_is_within_1e_6,
        {"noise_scale": 1.0, "seed": 0},
    ),
    "naive-float32-sums-vs-1e4-targets": Kill(
        _variant(_CLASSES["regression"], _NaiveR2),
        test_r2_of_float32_targets_near_1e4_is_accurate,
        {"seed": 0},
    ),
    "naive-sums-vs-sklearn-r2": Kill(
        _variant(_CLASSES["regression"], _NaiveR2),
        test_regression_metrics_match_sklearn,
        {"dtype": F16, "seed": 2},
    ),
    "no-constant-rule": Kill(
        _variant(_CLASSES["regression"], _NoConstantRule),
        test_regression_edge_cases_have_documented_results,
        {"case": _reg([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]), "want": {"r2": 1.0}},
    ),
    "no-constant-rule-single-sample": Kill(
        _variant(_CLASSES["regression"], _NoConstantRule),
        test_regression_edge_cases_have_documented_results,
        {"case": _reg([2.0], [3.0]), "want": {"r2": 0.0}},
    ),
    "equal-weight-merge": Kill(
        _variant(_CLASSES["regression"], _EqualWeightMerge),
        test_merge_is_commutative_associative_and_equals_one_state,
        {"family": "regression", "seed": 1},
    ),
    "equal-weight-merge-streaming": Kill(
        _variant(_CLASSES["regression"], _EqualWeightMerge),
        test_streaming_over_ragged_batches_equals_one_shot,
        {"family": "regression", "seed": 1},
    ),
    "empty-batch-not-skipped": Kill(
        _variant(_CLASSES["regression"], _NoEmptyGuard),
        test_streaming_over_ragged_batches_equals_one_shot,
        {"family": "regression", "seed": 0},
    ),
    "no-data-gives-nan": Kill(
        _variant(_CLASSES["regression"], _NoDataNaN),
        test_fresh_state_computes_zeros,
        {"family": "regression"},
    ),
    "accepts-lists": Kill(
        _variant(_CLASSES["regression"], _AcceptsLists),
        test_non_tensor_input_is_a_type_error,
        {},
    ),
    "truncates-mismatched-lengths": Kill(
        _variant(_CLASSES["regression"], _TruncatingRegression),
        test_bad_input_raises_value_error_naming_the_problem,
        {"face": "one-shot", "case": "regression-element-counts-differ"},
    ),
    "reset-keeps-data": Kill(
        _variant(_CLASSES["regression"], _ResetKeepsData),
        test_reset_forgets_everything,
        {"family": "regression"},
    ),
    "state-keeps-batches": Kill(
        _variant(_CLASSES["regression"], _KeepsBatches),
        test_state_memory_is_independent_of_data_size,
        {"family": "regression"},
    ),
    "python-loop-over-elements": Kill(
        _variant(_CLASSES["regression"], _PythonLoop),
        test_update_runs_the_same_python_code_for_any_batch_size,
        {"family": "regression"},
    ),
    "merge-accepts-anything": Kill(
        _variant(_CLASSES["regression"], _MergeAnything),
        test_merge_rejects_incompatible_states,
        {"state": _MergeAnything, "other": M.StreamingCountMetrics, "error": TypeError},
    ),
    "wrap-around-negative-true-id": Kill(
        _variant(_CLASSES["classification"], _WrapIds),
        test_bad_input_raises_value_error_naming_the_problem,
        {"face": "update", "case": "classification-negative-true-id"},
    ),
    "wrap-around-id-beyond-k": Kill(
        _variant(_CLASSES["classification"], _WrapIds),
        test_bad_input_raises_value_error_naming_the_problem,
        {"face": "one-shot", "case": "classification-pred-id-beyond-num_classes"},
    ),
    "macro-instead-of-weighted": Kill(
        _variant(_CLASSES["classification"], _MacroAverage),
        test_classification_metrics_match_sklearn,
        {"form": "ids", "give_k": True, "seed": 0},
    ),
    "macro-instead-of-weighted-absent-classes": Kill(
        _variant(_CLASSES["classification"], _MacroAverage),
        test_classification_edge_cases_have_documented_results,
        {"case": _ABSENT, "want": _ABSENT_WANT, "cm_shape": (4, 4)},
    ),
    "transposed-confusion-matrix": Kill(
        _variant(_CLASSES["classification"], _TransposedConfusion),
        test_classification_metrics_match_sklearn,
        {"form": "log_probs", "give_k": False, "seed": 1},
    ),
    "argmin-of-log-probs": Kill(
        _variant(_CLASSES["classification"], _Argmin),
        test_log_probs_and_their_argmax_ids_give_identical_results,
        {"dtype": F32, "seed": 0},
    ),
    "confusion-matrix-never-grows": Kill(
        _variant(_CLASSES["classification"], _NoGrowth),
        test_streaming_confusion_matrix_grows_as_new_ids_appear,
        {},
        failures=(RuntimeError,),  # bincount's counts do not fit the [0, 0] matrix
    ),
    "merge-ignores-num_classes": Kill(
        _variant(_CLASSES["classification"], _MergeIgnoresNumClasses),
        test_merge_rejects_more_classes_than_num_classes,
        {},
    ),
    "no-padding-on-merge": Kill(
        _variant(_CLASSES["classification"], _NoPadOnMerge),
        test_merge_pads_confusion_matrices_to_the_larger_size,
        {},
        failures=(RuntimeError,),  # adding a [3, 3] and a [5, 5] matrix
    ),
    "mask-by-multiplication": Kill(
        _variant(_CLASSES["count"], _MultiplyMask),
        test_count_metrics_match_float64_reference_ignoring_padding_garbage,
        {"dtype": F32, "mask_dtype": torch.bool, "seed": 0},
    ),
    "mask-by-multiplication-edge": Kill(
        _variant(_CLASSES["count"], _MultiplyMask),
        test_count_edge_cases_have_documented_results,
        {
            "case": CountCase(
                torch.tensor([[[1.0], [NAN]]]), torch.tensor([[[3.0], [INF]]]), _t([[1, 0]])
            ),
            "want": {"mae": 2.0, "mse": 4.0},
        },
    ),
    "merge-aliases-the-other-state": Kill(
        _variant(_CLASSES["count"], _AliasingMerge),
        test_merge_leaves_the_other_state_unchanged,
        {"family": "count", "receiver": "empty"},
    ),
    "state-changed-before-validation": Kill(
        _variant(_CLASSES["count"], _CountsBeforeValidating),
        test_rejected_update_leaves_the_state_unchanged,
        {"family": "count", "case": "count-nan-at-valid-pred"},
    ),
    "no-non-finite-check": Kill(
        _variant("_nonfinite_count", _no_nonfinite_check),
        test_bad_input_raises_value_error_naming_the_problem,
        {"face": "one-shot", "case": "count-nan-at-valid-pred"},
    ),
    "no-non-finite-check-regression": Kill(
        _variant("_nonfinite_count", _no_nonfinite_check),
        test_bad_input_raises_value_error_naming_the_problem,
        {"face": "update", "case": "regression-nan-in-y_pred"},
    ),
}


@pytest.mark.parametrize("variant", list(_KILLS), ids=str)
def test_property_fails_on_broken_variant(monkeypatch, variant):
    kill = _KILLS[variant]
    for attr, replacement in kill.patch.items():
        monkeypatch.setattr(M, attr, replacement)
    kwargs = dict(kill.kwargs)
    if "contract_device" in inspect.signature(kill.test).parameters:
        kwargs["contract_device"] = "cpu"
    with pytest.raises(kill.failures):
        kill.test(**kwargs)
