"""One check per metric rule: C-METRIC-REF-1, C-METRIC-INPUT-1, C-METRIC-EDGE-1, C-STREAM-1..4.

Each ``check_*`` takes the metrics target (attribute access to a module with the one-shot
functions and streaming classes of ``aam.training.metrics``), one drawn case and plain keyword
parameters; it returns ``None`` or raises :class:`~robustness.errors.ContractViolation` with a
replay spec. ``metric`` names the family: ``"regression"``, ``"classification"`` or ``"count"``;
a violation's term is ``"<family>.<key>"`` (``"regression.r2"``) when one value is wrong and the
family name when the whole call is.

Streaming states are built from the target (``StreamingRegressionMetrics()`` etc.) and driven
only through ``update``/``compute``/``merge``/``reset``. ``merge`` is used as the interface
says (in place); a return value other than ``None`` is taken as the merged state.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustness.errors import ContractViolation, HarnessUsageError, ReplaySpec
from robustness.references._metrics import (
    r2_condition,
    reference_classification_metrics,
    reference_count_metrics,
    reference_regression_metrics,
)
from robustness.strategies._metric_data import (
    ClassificationData,
    CountData,
    Partition,
    RegressionData,
)
from robustness.target import MetricsTarget
from robustness.tolerances import Tolerance, tolerance

__all__ = [
    "ID_CASES",
    "INPUT_CASES",
    "METRIC_FAMILIES",
    "check_metric_edge_cases",
    "check_metric_input_validation",
    "check_metric_reference",
    "check_stream_merge",
    "check_stream_partition",
    "check_stream_stability",
    "check_stream_vectorized",
]

MetricData = RegressionData | ClassificationData | CountData

#: Family -> (one-shot function, streaming class, result keys compared as numbers).
_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "regression": (
        "compute_regression_metrics",
        "StreamingRegressionMetrics",
        ("mae", "mse", "r2"),
    ),
    "classification": (
        "compute_classification_metrics",
        "StreamingClassificationMetrics",
        ("accuracy", "precision", "recall", "f1"),
    ),
    "count": ("compute_count_metrics", "StreamingCountMetrics", ("mae", "mse")),
}
METRIC_FAMILIES = tuple(_FAMILIES)
_DATA_TYPES: dict[str, type] = {
    "regression": RegressionData,
    "classification": ClassificationData,
    "count": CountData,
}

#: Bad inputs of C-METRIC-INPUT-1, per family.
INPUT_CASES: dict[str, tuple[str, ...]] = {
    "regression": ("length_mismatch",),
    "classification": (
        "negative_true",
        "negative_pred",
        "true_out_of_range",
        "pred_out_of_range",
        "length_mismatch",
    ),
    "count": ("length_mismatch", "mask_mismatch"),
}

#: The id cases of C-METRIC-INPUT-1: case -> (the tensor it corrupts, the bad id's side).
#: Spelled out rather than parsed from the name: ``true_out_of_range`` once corrupted y_pred.
ID_CASES: dict[str, tuple[str, str]] = {
    "negative_true": ("y_true", "negative"),
    "negative_pred": ("y_pred", "negative"),
    "true_out_of_range": ("y_true", "high"),
    "pred_out_of_range": ("y_pred", "high"),
}

#: C-STREAM-3: R² of ``1e8 + noise`` targets within this of the reference (relative beyond 1).
STABILITY_ATOL = 1e-6

#: C-STREAM-4 sizes: element counts of one update traced for Python lines, and of the data fed
#: before measuring the state's footprint.
_TRACE_SMALL, _TRACE_LARGE = 100, 10_000
_FEED_BATCH, _FEED_SMALL, _FEED_LARGE = 500, 20, 200
#: A vectorized update may loop over chunks, not elements: at most one traced line per 100.
_LINES_PER_ELEMENT = 1 / 100
#: Bytes the state may grow by between 1e4 and 1e5 elements (Python ints, small bookkeeping).
_STATE_SLACK_BYTES = 1024


# --------------------------------------------------------------------------- plumbing


def _family(metric: str, data: object | None = None) -> tuple[str, str, tuple[str, ...]]:
    if metric not in _FAMILIES:
        raise HarnessUsageError(f"metric must be one of {', '.join(_FAMILIES)}, got {metric!r}")
    expected = _DATA_TYPES[metric]
    if data is not None and not isinstance(data, expected):
        raise HarnessUsageError(
            f"metric={metric!r} needs a {expected.__name__} case, got {type(data).__name__}"
        )
    return _FAMILIES[metric]


def _kwargs(data: MetricData) -> dict[str, Any]:
    if isinstance(data, ClassificationData) and data.num_classes is not None:
        return {"num_classes": data.num_classes}
    return {}


def _one_shot(metrics: MetricsTarget, metric: str, data: MetricData) -> Mapping[str, Any]:
    fn = getattr(metrics, _FAMILIES[metric][0])
    result = fn(*data.args(), **_kwargs(data))
    if not isinstance(result, Mapping):
        raise TypeError(f"{_FAMILIES[metric][0]} returned a {type(result).__name__}, not a dict")
    return result


def _new_state(metrics: MetricsTarget, metric: str, data: MetricData) -> Any:
    return getattr(metrics, _FAMILIES[metric][1])(**_kwargs(data))


def _fed(metrics: MetricsTarget, metric: str, data: MetricData, parts: list[MetricData]) -> Any:
    state = _new_state(metrics, metric, data)
    for part in parts:
        state.update(*part.args())
    return state


def _merge(state: Any, other: Any) -> Any:
    result = state.merge(other)
    return state if result is None else result


def _compute(state: Any) -> Mapping[str, Any]:
    result = state.compute()
    if not isinstance(result, Mapping):
        raise TypeError(f"compute() returned a {type(result).__name__}, not a dict")
    return result


def _number(value: Any) -> float:
    """A result value as a float (a Python number or a one-element tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().cpu().item())
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")


def _matrix(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.int64).numpy()
    return np.asarray(value, dtype=np.int64)


def _tolerances(metric: str, data: MetricData) -> dict[str, Tolerance]:
    """Per-key tolerance: the input dtype's, over the reduction size, scaled by what cancels.

    MAE/MSE: ``atol`` scales with the largest |difference| (squared for MSE). R²: a stable
    variance has relative error about ``eps · condition`` (see :func:`r2_condition`), and R²
    inherits the relative errors of both sums times ``|1 - R²|``. Classification ratios are
    ratios of counts, accepted from any float32-or-wider computation.
    """
    if isinstance(data, ClassificationData):
        tol = tolerance(torch.float32, n=max(data.n_rows, 1))
        return dict.fromkeys(_FAMILIES[metric][2], tol)
    if isinstance(data, CountData):
        valid = data.valid.cpu()
        pred = data.count_pred.detach().cpu().double()[..., 0][valid]
        true = data.count_true.detach().cpu().double()[..., 0][valid]
        dtype = data.dtype
    else:
        pred = data.y_pred.detach().cpu().double().reshape(-1)
        true = data.y_true.detach().cpu().double().reshape(-1)
        dtype = data.dtype
    n = max(int(true.numel()), 1)
    biggest = float((pred - true).abs().max()) if true.numel() else 0.0
    out = {
        "mae": tolerance(dtype, n=n, scale=biggest),
        "mse": tolerance(dtype, n=n, scale=biggest**2),
    }
    if metric == "regression":
        ref_r2 = reference_regression_metrics(pred, true)["r2"]
        scale = abs(1.0 - ref_r2) * (1.0 + r2_condition(true))
        out["r2"] = tolerance(dtype, n=n, scale=scale)
    return out


def _reference(metric: str, data: MetricData) -> dict[str, Any]:
    if isinstance(data, RegressionData):
        return dict(reference_regression_metrics(data.y_pred, data.y_true))
    if isinstance(data, ClassificationData):
        return reference_classification_metrics(data.y_pred, data.y_true, data.num_classes)
    return dict(reference_count_metrics(*data.args()))


def _close(got: float, want: float, tol: Tolerance) -> bool:
    return math.isfinite(got) and abs(got - want) <= tol.atol + tol.rtol * abs(want)


def _base_details(data: MetricData, device: str, **extra: object) -> dict[str, object]:
    details: dict[str, object] = {"input": data.describe(), "device": device}
    details.update(extra)
    return details


def _raised(
    rule: str,
    metric: str,
    what: str,
    exc: BaseException,
    details: dict[str, object],
    replay: ReplaySpec,
) -> ContractViolation:
    details = {**details, "error": f"{type(exc).__name__}: {exc}"}
    return ContractViolation(
        rule,
        metric,
        f"{what} raised {type(exc).__name__} on valid input",
        details=details,
        replay=replay,
    )


def _compare_results(
    rule: str,
    metric: str,
    data: MetricData,
    got: Mapping[str, Any],
    want: Mapping[str, Any],
    *,
    headline: str,
    details: dict[str, object],
    replay: ReplaySpec,
    exact: bool = False,
    keys: Sequence[str] | None = None,
    matrix: bool = True,
) -> None:
    """Raise on the first key of ``got`` that differs from ``want`` beyond tolerance."""
    tols = _tolerances(metric, data)
    for key in _FAMILIES[metric][2] if keys is None else keys:
        if key not in got:
            raise ContractViolation(
                rule,
                f"{metric}.{key}",
                f"{headline}: result has no {key!r}",
                details={**details, "keys": sorted(got)},
                replay=replay,
            )
        try:
            value = _number(got[key])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ContractViolation(
                rule,
                f"{metric}.{key}",
                f"{headline}: {key} is not a number",
                details={**details, "error": str(exc)},
                replay=replay,
            ) from exc
        expected = _number(want[key])
        ok = value == expected if exact else _close(value, expected, tols[key])
        if not ok:
            said = f"{key} = {value!r}, expected {expected!r}"
            if math.isnan(value) and math.isnan(expected):
                said = (
                    f"{key} is NaN in both results: every metric owes a number (0.0 where it "
                    "is undefined), so the fault is the NaN, not the difference"
                )
            raise ContractViolation(
                rule,
                f"{metric}.{key}",
                f"{headline}: {said}",
                details={
                    **details,
                    "got": repr(value),
                    "expected": repr(expected),
                    "difference": f"{abs(value - expected):.6g}" if math.isfinite(value) else "-",
                    "tolerance": "exact" if exact else tols[key].describe(),
                },
                replay=replay,
            )
    if metric == "classification" and matrix:
        if "confusion_matrix" not in got:
            raise ContractViolation(
                rule,
                f"{metric}.confusion_matrix",
                f"{headline}: result has no confusion_matrix",
                details={**details, "keys": sorted(got)},
                replay=replay,
            )
        got_cm, want_cm = _matrix(got["confusion_matrix"]), _matrix(want["confusion_matrix"])
        if got_cm.shape != want_cm.shape or not np.array_equal(got_cm, want_cm):
            raise ContractViolation(
                rule,
                f"{metric}.confusion_matrix",
                f"{headline}: confusion matrix differs",
                details={**details, "got": got_cm.tolist(), "expected": want_cm.tolist()},
                replay=replay,
            )


def _check_partition(data: MetricData, partition: Partition) -> None:
    if partition.total != data.n_rows or any(s < 0 for s in partition.sizes):
        raise HarnessUsageError(
            f"partition {list(partition.sizes)} does not split the case's {data.n_rows} rows"
        )


def _parts(data: MetricData, partition: Partition) -> list[MetricData]:
    return [data.rows(a, b) for a, b in partition.bounds()]


# --------------------------------------------------------------------------- C-METRIC-REF-1


def check_metric_reference(
    metrics: MetricsTarget, data: MetricData, *, metric: str, device: str = "cpu"
) -> None:
    """C-METRIC-REF-1: the one-shot metric equals the float64 reference within tolerance.

    Raises:
        ContractViolation: if a value differs (term ``"<family>.<key>"``), the confusion matrix
            differs, or the call raises on valid input.
        HarnessUsageError: if ``metric`` is unknown or does not match the case.
    """
    _family(metric, data)
    replay = ReplaySpec.of(
        check_metric_reference, "metrics", data=data, metric=metric, device=device
    )
    details = _base_details(data, device)
    want = _reference(metric, data)
    try:
        got = _one_shot(metrics, metric, data.to(device))
    except Exception as exc:
        raise _raised("C-METRIC-REF-1", metric, _FAMILIES[metric][0], exc, details, replay) from exc
    _compare_results(
        "C-METRIC-REF-1",
        metric,
        data,
        got,
        want,
        headline="one-shot metric differs from the float64 reference",
        details=details,
        replay=replay,
    )


# --------------------------------------------------------------------------- C-METRIC-INPUT-1


def _bad_input(data: MetricData, case: str, index: int, offset: int) -> tuple[MetricData, str]:
    """Corrupt a valid case as ``case`` says; return it with a one-line description."""
    if isinstance(data, RegressionData):
        extra = torch.zeros(1, dtype=data.y_pred.dtype)
        pred = torch.cat([data.y_pred.reshape(-1), extra])
        return (
            RegressionData(pred, data.y_true, data.kind),
            f"y_pred has {pred.numel()} elements, y_true {data.y_true.numel()}",
        )
    if isinstance(data, CountData):
        if case == "length_mismatch":
            pad = torch.zeros((1, *data.count_pred.shape[1:]), dtype=data.count_pred.dtype)
            pred = torch.cat([data.count_pred, pad])
            return (
                CountData(pred, data.count_true, data.mask),
                f"count_pred {tuple(pred.shape)} vs count_true {tuple(data.count_true.shape)}",
            )
        column = torch.zeros((data.mask.shape[0], 1), dtype=data.mask.dtype)
        mask = torch.cat([data.mask, column], dim=1)
        return (
            CountData(data.count_pred, data.count_true, mask),
            f"mask {tuple(mask.shape)} vs count_pred {tuple(data.count_pred.shape)}",
        )
    assert isinstance(data, ClassificationData)
    if case == "length_mismatch":
        true = torch.cat([data.y_true, torch.zeros(1, dtype=data.y_true.dtype)])
        return (
            ClassificationData(data.y_pred, true, data.num_classes),
            f"{data.n_rows} predictions, {true.numel()} targets",
        )
    row = index % data.n_rows
    k = data.k
    tensor, side = ID_CASES[case]
    bad = -1 - offset if side == "negative" else k + offset
    if tensor == "y_true":
        true = data.y_true.clone()
        true[row] = bad
        return (
            ClassificationData(data.y_pred, true, data.num_classes),
            f"y_true[{row}] = {bad} with K = {k}",
        )
    pred = data.y_pred.clone()
    pred[row] = bad
    return (
        ClassificationData(pred, data.y_true, data.num_classes),
        f"y_pred[{row}] = {bad} with K = {k}",
    )


def _input_case_usable(data: MetricData, case: str) -> str | None:
    """Why ``case`` cannot be built from ``data`` (``None`` when it can)."""
    if case == "length_mismatch" or isinstance(data, (RegressionData, CountData)):
        return None
    if data.n_rows == 0:
        return "needs at least one sample"
    tensor, side = ID_CASES[case]
    if tensor == "y_pred" and data.pred_form != "ids":
        return "needs predictions given as [B] ids"
    if side == "high" and data.num_classes is None:
        return "needs num_classes (without it, K is only inferred and no id is out of range)"
    return None


def check_metric_input_validation(
    metrics: MetricsTarget,
    data: MetricData,
    *,
    metric: str,
    case: str,
    index: int = 0,
    offset: int = 0,
    device: str = "cpu",
) -> None:
    """C-METRIC-INPUT-1: bad ids and mismatched lengths raise ``ValueError``, never wrap around.

    ``case`` (see :data:`INPUT_CASES`) corrupts the valid ``data``: an id ``-1 - offset`` or
    ``K + offset`` at sample ``index % B`` of the targets or the predictions, one extra
    prediction, or (count) a mask one column wider. Both the one-shot function and a streaming
    ``update`` must raise ``ValueError``.

    Raises:
        ContractViolation: if a call accepts the input or raises something else.
        HarnessUsageError: if the case does not exist for ``metric`` or cannot be built.
    """
    _family(metric, data)
    if case not in INPUT_CASES[metric]:
        raise HarnessUsageError(
            f"case for {metric} must be one of {', '.join(INPUT_CASES[metric])}, got {case!r}"
        )
    why = _input_case_usable(data, case)
    if why:
        raise HarnessUsageError(f"input case {case!r} {why}; got {data.describe()}")
    replay = ReplaySpec.of(
        check_metric_input_validation,
        "metrics",
        data=data,
        metric=metric,
        case=case,
        index=index,
        offset=offset,
        device=device,
    )
    bad, what = _bad_input(data, case, index, offset)
    details = _base_details(bad, device, case=case, corruption=what)
    bad = bad.to(device)
    calls: list[tuple[str, Callable[[], Any]]] = [
        (_FAMILIES[metric][0], lambda: _one_shot(metrics, metric, bad)),
        (
            f"{_FAMILIES[metric][1]}.update",
            lambda: _new_state(metrics, metric, bad).update(*bad.args()),
        ),
    ]
    for name, call in calls:
        try:
            result = call()
        except ValueError:
            continue
        except Exception as exc:
            raise ContractViolation(
                "C-METRIC-INPUT-1",
                metric,
                f"{name} raised {type(exc).__name__}, not ValueError, for {case}",
                details={**details, "error": f"{type(exc).__name__}: {exc}"},
                replay=replay,
            ) from exc
        raise ContractViolation(
            "C-METRIC-INPUT-1",
            metric,
            f"{name} accepted invalid input ({case})",
            details={**details, "returned": repr(result)},
            replay=replay,
        )


# --------------------------------------------------------------------------- C-METRIC-EDGE-1


def _documented_edge(metric: str, data: MetricData) -> tuple[str, dict[str, Any]] | None:
    """The documented exact result of an edge case, or ``None`` for an ordinary case."""
    zeros: dict[str, Any] = dict.fromkeys(_FAMILIES[metric][2], 0.0)
    if isinstance(data, RegressionData):
        if data.n_rows == 0:
            return "no data gives 0.0", zeros
        true = data.y_true.detach().cpu().reshape(-1)
        if bool((true == true[0]).all()):
            perfect = bool((data.y_pred.detach().cpu().reshape(-1) == true).all())
            return (
                "constant targets give R² = " + ("1.0 (perfect predictions)" if perfect else "0.0"),
                {"r2": 1.0 if perfect else 0.0},
            )
        return None
    if isinstance(data, CountData):
        if not bool(data.valid.any()):
            return "no valid entries give 0.0", zeros
        return None
    if data.n_rows == 0:
        zeros["confusion_matrix"] = np.zeros((data.k, data.k), dtype=np.int64)
        return "no data gives 0.0 and an all-zero confusion matrix", zeros
    return None


def check_metric_edge_cases(
    metrics: MetricsTarget, data: MetricData, *, metric: str, device: str = "cpu"
) -> None:
    """C-METRIC-EDGE-1: edge cases have their documented, finite results.

    Every value is a finite number. No data / no valid entries give exactly 0.0 (also from a
    fresh streaming state); constant targets (a single sample included) give R² exactly 1.0 for
    perfect predictions, else 0.0; absent classes match the reference; predictions given as
    ``[B, K]`` log-probabilities give the same result as their argmax ids ``[B]``.

    Raises:
        ContractViolation: on a non-finite, missing or undocumented value.
        HarnessUsageError: if ``metric`` is unknown or does not match the case.
    """
    _family(metric, data)
    replay = ReplaySpec.of(
        check_metric_edge_cases, "metrics", data=data, metric=metric, device=device
    )
    details = _base_details(data, device)
    rule = "C-METRIC-EDGE-1"
    try:
        got = _one_shot(metrics, metric, data.to(device))
    except Exception as exc:
        raise _raised(rule, metric, _FAMILIES[metric][0], exc, details, replay) from exc
    for key in _FAMILIES[metric][2]:
        try:
            value = _number(got[key])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ContractViolation(
                rule,
                f"{metric}.{key}",
                f"{key} is missing or not a number",
                details={**details, "error": f"{type(exc).__name__}: {exc}"},
                replay=replay,
            ) from exc
        if not math.isfinite(value):
            raise ContractViolation(
                rule,
                f"{metric}.{key}",
                f"{key} = {value!r} is not finite",
                details={**details, "result": repr(dict(got))},
                replay=replay,
            )
    edge = _documented_edge(metric, data)
    if edge is not None:
        what, want = edge
        for key, expected in want.items():
            if key == "confusion_matrix":
                cm = _matrix(got.get(key, np.ones(1)))
                if cm.size and (cm != 0).any():
                    raise ContractViolation(
                        rule,
                        f"{metric}.{key}",
                        f"{what}, got a non-zero confusion matrix",
                        details={**details, "got": cm.tolist()},
                        replay=replay,
                    )
                continue
            if _number(got[key]) != expected:
                raise ContractViolation(
                    rule,
                    f"{metric}.{key}",
                    f"{what}, got {key} = {_number(got[key])!r}",
                    details={**details, "expected": repr(expected), "result": repr(dict(got))},
                    replay=replay,
                )
        if what.startswith("no"):
            try:
                fresh = _compute(_new_state(metrics, metric, data))
            except Exception as exc:
                raise _raised(
                    rule, metric, "compute() of a fresh state", exc, details, replay
                ) from exc
            for key in _FAMILIES[metric][2]:
                empty_value = fresh.get(key)
                if empty_value is None or _number(empty_value) != 0.0:
                    raise ContractViolation(
                        rule,
                        f"{metric}.{key}",
                        f"a state with no data must give 0.0, got {key} = {empty_value!r}",
                        details=details,
                        replay=replay,
                    )
    # Documented values were compared exactly above; every other value against the reference.
    documented = set(edge[1]) if edge is not None else set()
    _compare_results(
        rule,
        metric,
        data,
        got,
        _reference(metric, data),
        headline="edge case differs from the reference",
        details=details,
        replay=replay,
        keys=[k for k in _FAMILIES[metric][2] if k not in documented],
        matrix="confusion_matrix" not in documented,
    )
    if isinstance(data, ClassificationData) and data.pred_form == "log_probs":
        as_ids = data.with_ids()
        try:
            by_ids = _one_shot(metrics, metric, as_ids.to(device))
        except Exception as exc:
            raise _raised(
                rule, metric, "the same predictions as [B] ids", exc, details, replay
            ) from exc
        _compare_results(
            rule,
            metric,
            data,
            by_ids,
            got,
            headline="[B] ids give a different result than their [B, K] log-probs",
            details={**details, "ids": as_ids.y_pred.tolist()},
            replay=replay,
            exact=True,
        )


# --------------------------------------------------------------------------- C-STREAM-1


def check_stream_partition(
    metrics: MetricsTarget,
    data: MetricData,
    *,
    metric: str,
    partition: Partition,
    device: str = "cpu",
) -> None:
    """C-STREAM-1: ``update`` over ragged batches (empty ones included) equals the one-shot.

    Checked for a fresh state and for a state that was fed the data, ``reset()`` and fed again
    (a state reused across epochs).

    Raises:
        ContractViolation: if a streamed value differs beyond tolerance or a call raises.
        HarnessUsageError: if the partition does not split the case.
    """
    _family(metric, data)
    _check_partition(data, partition)
    replay = ReplaySpec.of(
        check_stream_partition,
        "metrics",
        data=data,
        metric=metric,
        partition=partition,
        device=device,
    )
    rule = "C-STREAM-1"
    details = _base_details(data, device, partition=partition.describe())
    on_device = data.to(device)
    parts = _parts(on_device, partition)
    try:
        whole = _one_shot(metrics, metric, on_device)
    except Exception as exc:
        raise _raised(rule, metric, _FAMILIES[metric][0], exc, details, replay) from exc
    try:
        streamed = _compute(_fed(metrics, metric, on_device, parts))
    except Exception as exc:
        raise _raised(
            rule, metric, "update/compute over the partition", exc, details, replay
        ) from exc
    _compare_results(
        rule,
        metric,
        data,
        streamed,
        whole,
        headline="streamed over ragged batches differs from the one-shot metric",
        details=details,
        replay=replay,
    )
    try:
        reused = _fed(metrics, metric, on_device, [on_device])
        reused.reset()
        for part in parts:
            reused.update(*part.args())
        again = _compute(reused)
    except Exception as exc:
        raise _raised(rule, metric, "reset() then update", exc, details, replay) from exc
    _compare_results(
        rule,
        metric,
        data,
        again,
        whole,
        headline="after reset() and the same batches, the state differs from the one-shot",
        details=details,
        replay=replay,
    )


# --------------------------------------------------------------------------- C-STREAM-2


def _snapshot(result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _matrix(v).tolist() if k == "confusion_matrix" else repr(_number(v))
        for k, v in result.items()
        if k == "confusion_matrix" or not isinstance(v, (dict, list, tuple, str))
    }


def check_stream_merge(
    metrics: MetricsTarget,
    data: MetricData,
    *,
    metric: str,
    partition: Partition,
    device: str = "cpu",
) -> None:
    """C-STREAM-2: ``merge`` is commutative and associative and equals one state fed all data.

    The partition's batches go round-robin to three states A, B, C. Checked: A⊕B = B⊕A,
    (A⊕B)⊕C = A⊕(B⊕C), both equal one state fed every batch; and ``A.merge(B)`` leaves B's
    result unchanged, also after A is updated further (no shared, aliased state).

    Raises:
        ContractViolation: if a merged result differs beyond tolerance, B changes, or a call
            raises.
        HarnessUsageError: if the partition does not split the case.
    """
    _family(metric, data)
    _check_partition(data, partition)
    replay = ReplaySpec.of(
        check_stream_merge, "metrics", data=data, metric=metric, partition=partition, device=device
    )
    rule = "C-STREAM-2"
    details = _base_details(data, device, partition=partition.describe())
    on_device = data.to(device)
    parts = _parts(on_device, partition)
    groups = [parts[g::3] for g in range(3)]

    def state(g: int) -> Any:
        return _fed(metrics, metric, on_device, groups[g])

    def compare(got: Mapping[str, Any], want: Mapping[str, Any], headline: str) -> None:
        _compare_results(
            rule, metric, data, got, want, headline=headline, details=details, replay=replay
        )

    try:
        single = _compute(_fed(metrics, metric, on_device, parts))
        ab = _compute(_merge(state(0), state(1)))
        ba = _compute(_merge(state(1), state(0)))
        ab_c = _compute(_merge(_merge(state(0), state(1)), state(2)))
        a_bc = _compute(_merge(state(0), _merge(state(1), state(2))))
    except Exception as exc:
        raise _raised(rule, metric, "update/merge/compute", exc, details, replay) from exc
    # A NaN where the reference owes a number (0.0 for an undefined precision) is the fault
    # to report; compared with each other, two NaN results would read as a merge-order bug.
    want = _reference(metric, data)
    for name, result in (("one state fed all the data", single), ("(A⊕B)⊕C", ab_c)):
        for key in _FAMILIES[metric][2]:
            try:
                got, owed = _number(result.get(key, 0.0)), _number(want[key])
            except TypeError:
                continue  # not a number: compare() below says so
            if math.isnan(got) and not math.isnan(owed):
                raise ContractViolation(
                    rule,
                    f"{metric}.{key}",
                    f"{name} gives {key} = nan where the float64 reference is {owed!r}",
                    details={**details, "got": "nan", "expected": repr(owed)},
                    replay=replay,
                )
    compare(ab, ba, "merge is not commutative: A⊕B differs from B⊕A")
    compare(ab_c, a_bc, "merge is not associative: (A⊕B)⊕C differs from A⊕(B⊕C)")
    compare(ab_c, single, "merged states differ from one state fed all the data")

    # The receiver is a fed state and an empty one (a distributed sync starts from empty); a
    # merge that adopts the other's tensors by reference shows only once the receiver updates.
    receivers: list[tuple[str, Callable[[], Any]]] = [
        ("a fed state", lambda: state(0)),
        ("an empty state", lambda: _fed(metrics, metric, on_device, [])),
    ]
    for receiver, make in receivers:
        other = state(1)
        try:
            before = _snapshot(_compute(other))
            merged = _merge(make(), other)
            after_merge = _snapshot(_compute(other))
            for part in parts:
                merged.update(*part.args())
            after_update = _snapshot(_compute(other))
        except Exception as exc:
            raise _raised(rule, metric, "merge then update", exc, details, replay) from exc
        for when, after in (("merge", after_merge), ("updating the merged state", after_update)):
            if after != before:
                raise ContractViolation(
                    rule,
                    metric,
                    f"merge into {receiver} changed the other state (seen after {when})",
                    details={**details, "other before": before, "other after": after},
                    replay=replay,
                )


# --------------------------------------------------------------------------- C-STREAM-3


def check_stream_stability(
    metrics: MetricsTarget,
    data: RegressionData,
    *,
    partition: Partition,
    metric: str = "regression",
    device: str = "cpu",
) -> None:
    """C-STREAM-3: float64 ``1e8 + noise`` targets give R² within 1e-6 of the reference.

    Checked for the one-shot function, a state streamed over the partition and two merged
    halves. The bound is ``1e-6 · max(1, |R²|)``: absolute for R² in [-1, 1], where every
    drawn case with moderate predictions lies, and relative beyond, where an absolute 1e-6 would
    ask for more digits than float64 holds. A naive ``Σy² - (Σy)²/n`` is off by order 1.

    Raises:
        ContractViolation: if R² is off by more, or a call raises.
        HarnessUsageError: if ``data`` is not float64 regression data.
    """
    _family(metric, data)
    if metric != "regression" or data.dtype != torch.float64:
        raise HarnessUsageError(
            f"C-STREAM-3 needs float64 regression data, got {metric} {data.describe()}"
        )
    _check_partition(data, partition)
    replay = ReplaySpec.of(
        check_stream_stability,
        "metrics",
        data=data,
        partition=partition,
        metric=metric,
        device=device,
    )
    rule = "C-STREAM-3"
    details = _base_details(data, device, partition=partition.describe())
    want = reference_regression_metrics(data.y_pred, data.y_true)["r2"]
    bound = STABILITY_ATOL * max(1.0, abs(want))
    on_device = data.to(device)
    parts = _parts(on_device, partition)
    half = len(parts) // 2
    runs: list[tuple[str, Callable[[], Mapping[str, Any]]]] = [
        ("one-shot", lambda: _one_shot(metrics, metric, on_device)),
        ("streamed", lambda: _compute(_fed(metrics, metric, on_device, parts))),
        (
            "merged halves",
            lambda: _compute(
                _merge(
                    _fed(metrics, metric, on_device, parts[:half]),
                    _fed(metrics, metric, on_device, parts[half:]),
                )
            ),
        ),
    ]
    for name, run in runs:
        try:
            got = _number(run()["r2"])
        except Exception as exc:
            raise _raised(rule, f"{metric}.r2", name, exc, details, replay) from exc
        if not (math.isfinite(got) and abs(got - want) <= bound):
            raise ContractViolation(
                rule,
                f"{metric}.r2",
                f"{name} R² = {got!r} is not within {bound:.3g} of {want!r}",
                details={
                    **details,
                    "difference": f"{abs(got - want):.6g}",
                    "allowed": f"{bound:.3g}",
                },
                replay=replay,
            )


# --------------------------------------------------------------------------- C-STREAM-4


def _batch(metric: str, n: int, seed: int) -> MetricData:
    """A deterministic batch of ``n`` elements (count: ``n // 10`` samples of 10 ASVs)."""
    gen = torch.Generator().manual_seed(seed)
    if metric == "regression":
        true = torch.randn(n, generator=gen, dtype=torch.float32)
        return RegressionData(true + 0.1 * torch.randn(n, generator=gen), true)
    if metric == "classification":
        scores = torch.randn(n, 4, generator=gen)
        return ClassificationData(
            torch.log_softmax(scores, dim=1), torch.randint(0, 4, (n,), generator=gen), 4
        )
    b = max(n // 10, 1)
    true = torch.rand(b, 10, 1, generator=gen) * 10
    mask = torch.rand(b, 10, generator=gen) > 0.3
    return CountData(true + torch.randn(b, 10, 1, generator=gen), true, mask)


def _footprint(obj: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes held by a state: tensor and array data plus Python containers, recursively."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (types.ModuleType, type, types.FunctionType, types.MethodType)):
        return 0
    size = sys.getsizeof(obj)
    if isinstance(obj, Mapping):
        return size + sum(
            _footprint(k, seen, depth + 1) + _footprint(v, seen, depth + 1) for k, v in obj.items()
        )
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + sum(_footprint(v, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__"):
        size += _footprint(vars(obj), seen, depth + 1)
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            size += _footprint(getattr(obj, slot), seen, depth + 1)
    return size


@dataclass
class _LineCounter:
    lines: int = 0

    def trace(self, frame: types.FrameType, event: str, arg: Any) -> Callable[..., Any]:
        if event == "line":
            self.lines += 1
        return self.trace


@contextmanager
def _count_lines() -> Iterator[_LineCounter]:
    """Count executed Python lines in every frame called inside the block (deterministic)."""
    counter = _LineCounter()
    previous = sys.gettrace()
    sys.settrace(counter.trace)
    try:
        yield counter
    finally:
        sys.settrace(previous)


def _class_ids_batch(n: int, seed: int) -> ClassificationData:
    """``n`` predicted and true ids ``[B]`` without ``num_classes``: K is only inferred.

    Seed ``s`` draws ids below ``1 + s % 4``, so fed in turn (seeds 0, 1, 2, ...) the classes
    arrive over the first batches and the state must grow its K as they come.
    """
    gen = torch.Generator().manual_seed(seed)
    high = 1 + seed % 4
    return ClassificationData(
        torch.randint(0, high, (n,), generator=gen), torch.randint(0, high, (n,), generator=gen)
    )


def _stream4_configs(metric: str) -> list[tuple[str, list[MetricData]]]:
    """``(what, [small, large, feed batch 0, feed batch 1, ...])`` per configuration measured.

    Classification is measured with ``num_classes=4`` and log-probs, and with
    ``num_classes=None`` and ids arriving over many batches (a state that keeps its batches to
    infer K at ``compute`` passes the first and must fail the second).
    """
    feeds = [_batch(metric, _FEED_BATCH, seed=3)]
    configs = [
        ("", [_batch(metric, _TRACE_SMALL, seed=1), _batch(metric, _TRACE_LARGE, 2), *feeds])
    ]
    if metric == "classification":
        configs[0] = ("num_classes=4, log-prob predictions", configs[0][1])
        ids = [_class_ids_batch(_FEED_BATCH, seed) for seed in range(4)]
        configs.append(
            (
                "num_classes=None, id predictions arriving over many batches",
                [_class_ids_batch(_TRACE_SMALL, 1), _class_ids_batch(_TRACE_LARGE, 2), *ids],
            )
        )
    return configs


def check_stream_vectorized(metrics: MetricsTarget, *, metric: str, device: str = "cpu") -> None:
    """C-STREAM-4: ``update`` is vectorized and the state's memory is independent of data size.

    Two deterministic measurements, no timing (timings are flaky on shared machines):

    * Python lines executed by one ``update`` (counted with :func:`sys.settrace`, after a
      warm-up call) on 100 and on 10,000 elements may differ by at most one per 100 added
      elements: a loop over chunks passes, any Python loop over elements does not.
    * The state's footprint (tensor/array bytes plus Python containers, walked recursively)
      after 1e4 and after 1e5 elements, fed in batches of 500, may differ by at most 1 KiB:
      fixed-size sums pass; keeping the data, or a list that grows per batch, does not. A
      bounded sample for plots of up to 1e4 elements is allowed.

    Classification is measured twice: with ``num_classes=4`` and log-probs, and with
    ``num_classes=None`` and id predictions whose classes arrive over the first batches.

    Raises:
        ContractViolation: if the line count or the footprint grows with the data.
        HarnessUsageError: if ``metric`` is unknown.
    """
    _family(metric)
    for what, batches in _stream4_configs(metric):
        _measure_stream(metrics, metric, device, what, [b.to(device) for b in batches])


def _measure_stream(
    metrics: MetricsTarget, metric: str, device: str, what: str, batches: list[MetricData]
) -> None:
    replay = ReplaySpec.of(check_stream_vectorized, "metrics", metric=metric, device=device)
    rule = "C-STREAM-4"
    small, large, *feeds = batches
    details: dict[str, object] = {"device": device}
    if what:
        details["configuration"] = what
    try:
        for warm in (small, large):
            _new_state(metrics, metric, warm).update(*warm.args())
        lines = []
        for batch in (small, large):
            state = _new_state(metrics, metric, batch)
            with _count_lines() as counter:
                state.update(*batch.args())
            lines.append(counter.lines)
        footprints = []
        for count in (_FEED_SMALL, _FEED_LARGE):
            state = _new_state(metrics, metric, feeds[0])
            for i in range(count):
                state.update(*feeds[i % len(feeds)].args())
            footprints.append(_footprint(state))
    except Exception as exc:
        raise _raised(rule, metric, "update", exc, details, replay) from exc
    allowed_lines = (_TRACE_LARGE - _TRACE_SMALL) * _LINES_PER_ELEMENT
    if lines[1] - lines[0] > allowed_lines:
        raise ContractViolation(
            rule,
            metric,
            "update runs Python code per element (not vectorized)"
            + (f" with {what}" if what else ""),
            details={
                **details,
                "python lines": f"{lines[0]} for {_TRACE_SMALL} elements, "
                f"{lines[1]} for {_TRACE_LARGE}",
                "allowed growth": f"{allowed_lines:.0f} lines (one per 100 elements)",
            },
            replay=replay,
        )
    n_small, n_large = _FEED_SMALL * _FEED_BATCH, _FEED_LARGE * _FEED_BATCH
    if footprints[1] - footprints[0] > _STATE_SLACK_BYTES:
        raise ContractViolation(
            rule,
            metric,
            "the streaming state grows with the data" + (f" with {what}" if what else ""),
            details={
                **details,
                "state size": f"{footprints[0]} bytes after {n_small} elements, "
                f"{footprints[1]} bytes after {n_large}",
                "allowed growth": f"{_STATE_SLACK_BYTES} bytes",
            },
            replay=replay,
        )
