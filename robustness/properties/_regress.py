"""The differential rules C-REGRESS-1..4: a candidate against a baseline on the same input.

The candidate is the target under test; the baseline is another implementation of the same
interface (the previous version: ``--baseline``, or a git revision: ``--baseline-ref``). Both
run on the same drawn input; a violation shows the input (``describe()``) and *both* results.

* C-REGRESS-1: each loss term has the baseline's shape and dtype and agrees with it within
  the tolerance C-DEVICE-1 gives a second implementation (:func:`~robustness.tolerances.
  tolerance` of the input dtype, ``n`` and ``scale`` from the term's reduction), wherever the
  baseline value is finite.
* C-REGRESS-2: the candidate's outcome is no worse: finite wherever the baseline is finite,
  and it raises exactly where the baseline raises, with an exception of the same family
  (``ValueError`` and its subclasses, or anything else; the message may change); it does not
  write to its inputs where the baseline does not.
* C-REGRESS-3: the same for gradients: wherever the baseline gradient is finite the
  candidate's is finite and agrees within tolerance (``scale``: the largest finite baseline
  gradient of that output); the candidate's graph reaches every output the baseline's
  reaches; a backward that raises only for the candidate is a violation.
* C-REGRESS-4: metrics, one-shot, streamed over a ragged partition and merged per batch:
  same outcome (finite, raises the same family) and every value of the baseline's result
  agrees (numbers within the C-METRIC-REF-1 tolerance, tensors such as the confusion matrix
  exactly).

A per-head loss term is computed on the batch restricted to that head (the other heads
dropped), so an approved change of one term (``--regress-skip count_loss``) cannot fail the
others through an exception in a shared ``forward``; ``total_loss`` gets every head.

``baseline`` is a :class:`~robustness.target.LossTarget` / :class:`~robustness.target.
MetricsTarget` or its spec string; replay files store the spec (a ``--baseline-ref`` baseline
is gone after the gate, so its repro files replay only against a ``--baseline`` import path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustness.errors import ContractViolation, HarnessUsageError, ReplaySpec
from robustness.properties._losses import LOSS_TERMS, _budget, _compare, _tolerance_text
from robustness.properties._metrics import METRIC_FAMILIES, _tolerances
from robustness.strategies import MultiTaskBatch
from robustness.strategies._metric_data import (
    ClassificationData,
    CountData,
    Partition,
    RegressionData,
)
from robustness.target import LossTarget, MetricsTarget, load_loss_target, load_metrics_target
from robustness.tolerances import Tolerance, tolerance

__all__ = [
    "REGRESS_RULES",
    "check_regress_gradients",
    "check_regress_metrics",
    "check_regress_outcome",
    "check_regress_values",
]

REGRESS_RULES = ("C-REGRESS-1", "C-REGRESS-2", "C-REGRESS-3", "C-REGRESS-4")

_HEAD_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "target_loss": (("target_prediction",), ("target",)),
    "count_loss": (("count_prediction",), ("counts", "mask")),
    "base_loss": (("base_prediction", "embeddings"), ("base_target",)),
    "nuc_loss": (("nuc_predictions",), ("nucleotides", "nuc_mask")),
}
_METRIC_CALLS = {
    "regression": ("compute_regression_metrics", "StreamingRegressionMetrics"),
    "classification": ("compute_classification_metrics", "StreamingClassificationMetrics"),
    "count": ("compute_count_metrics", "StreamingCountMetrics"),
}
_METRIC_DATA: dict[str, type] = {
    "regression": RegressionData,
    "classification": ClassificationData,
    "count": CountData,
}
_SHOW = 5

MetricData = RegressionData | ClassificationData | CountData


# --------------------------------------------------------------------------- plumbing


def _loss_baseline(baseline: LossTarget | str) -> LossTarget:
    return load_loss_target(baseline) if isinstance(baseline, str) else baseline


def _metrics_baseline(baseline: MetricsTarget | str) -> MetricsTarget:
    return load_metrics_target(baseline) if isinstance(baseline, str) else baseline


def _family(exc: BaseException) -> str:
    return "ValueError" if isinstance(exc, ValueError) else "not a ValueError"


def _exc(exc: BaseException) -> str:
    return f"raised {type(exc).__name__}: {exc}"


def _num(value: Tensor) -> str:
    v = value.detach().cpu()
    shown = f"{float(v):.9g}" if v.numel() == 1 else str(v.double().tolist())
    return f"{shown} ({str(v.dtype).removeprefix('torch.')}, shape {tuple(v.shape)})"


@dataclass(frozen=True)
class _Run:
    """What ``forward`` did on one implementation: the term's value, or the exception."""

    value: Tensor | None = None
    error: BaseException | None = None
    batch: MultiTaskBatch | None = None
    modified: tuple[str, ...] = ()

    @property
    def finite(self) -> bool:
        return self.value is not None and bool(torch.isfinite(self.value.detach()).all())

    def describe(self) -> str:
        text = _exc(self.error) if self.error is not None else _num(self.value)  # type: ignore[arg-type]
        if self.modified:
            text += f"; modified its inputs {', '.join(self.modified)} in place"
        return text


def _same_bits(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return bool(torch.equal(nan_a, nan_b)) and bool(
        torch.equal(torch.where(nan_a, 0, a), torch.where(nan_b, 0, b))
    )


def _only_head(batch: MultiTaskBatch, term: str) -> MultiTaskBatch:
    """``batch`` with only the head of ``term`` (every head for ``total_loss``)."""
    if term == "total_loss":
        return batch
    outputs_keys, target_keys = _HEAD_KEYS[term]
    if not any(k in batch.outputs for k in outputs_keys):
        raise HarnessUsageError(
            f"this batch has no head for {term!r} (outputs: {', '.join(batch.outputs)}); "
            "draw it with multitask_batches()"
        )
    return dataclasses.replace(
        batch,
        outputs={k: v for k, v in batch.outputs.items() if k in outputs_keys},
        targets={k: v for k, v in batch.targets.items() if k in target_keys},
        padded={k: v for k, v in batch.padded.items() if k in outputs_keys},
    )


def _run(loss: LossTarget, batch: MultiTaskBatch, term: str) -> _Run:
    """``forward`` on private copies of ``batch`` (so neither side sees the other's writes)."""
    run = dataclasses.replace(
        batch.with_grad(), targets={k: v.clone() for k, v in batch.targets.items()}
    )
    try:
        result = loss.make(**run.loss_kwargs)(
            dict(run.outputs),
            dict(run.targets),
            is_classifier=run.is_classifier,
            encoder_type=run.encoder_type,
        )
    except Exception as exc:  # the outcome itself is what is compared
        return _Run(error=exc, batch=run, modified=_modified(batch, run))
    value = result.get(term) if isinstance(result, Mapping) else None
    if not isinstance(value, Tensor):
        error = TypeError(f"forward returned no tensor {term!r} (got {type(value).__name__})")
        return _Run(error=error, batch=run, modified=_modified(batch, run))
    return _Run(value=value, batch=run, modified=_modified(batch, run))


def _modified(drawn: MultiTaskBatch, run: MultiTaskBatch) -> tuple[str, ...]:
    """Inputs of ``run`` whose values no longer equal those drawn (written in place)."""
    changed = [
        f"outputs[{k!r}]"
        for k, v in run.outputs.items()
        if not _same_bits(v.detach().cpu(), drawn.outputs[k].detach().cpu())
    ]
    changed += [
        f"targets[{k!r}]"
        for k, v in run.targets.items()
        if not _same_bits(v.cpu(), drawn.targets[k].cpu())
    ]
    return tuple(changed)


@dataclass(frozen=True)
class _Case:
    rule: str
    term: str
    check: Callable[..., None]
    batch: MultiTaskBatch
    baseline: str

    def violation(self, headline: str, details: Mapping[str, object]) -> ContractViolation:
        info: dict[str, object] = {"input": self.batch.describe()}
        info.update(details)
        info["baseline target"] = self.baseline
        replay = ReplaySpec.of(
            self.check, "loss", batch=self.batch, term=self.term, baseline=self.baseline
        )
        return ContractViolation(self.rule, self.term, headline, details=info, replay=replay)


def _prepare(
    rule: str,
    check: Callable[..., None],
    loss: LossTarget,
    batch: MultiTaskBatch,
    term: str,
    baseline: LossTarget | str,
) -> tuple[_Case, _Run, _Run]:
    if term not in LOSS_TERMS:
        raise HarnessUsageError(f"term must be one of {', '.join(LOSS_TERMS)}, got {term!r}")
    if not isinstance(batch, MultiTaskBatch):
        raise HarnessUsageError(f"batch must be a MultiTaskBatch, got {type(batch).__name__}")
    base = _loss_baseline(baseline)
    batch = _only_head(batch, term)
    case = _Case(rule, term, check, batch, base.spec)
    return case, _run(loss, batch, term), _run(base, batch, term)


def _positions(bad: Tensor, values: Tensor) -> str:
    """``"3 position(s): (0, 2, 0) = nan; ..."`` for the first few True in ``bad``."""
    idx = torch.nonzero(bad.cpu())
    shown = values.detach().cpu().double()
    parts = [f"{tuple(row)} = {float(shown[tuple(row)]):.9g}" for row in idx[:_SHOW].tolist()]
    more = f"; and {idx.shape[0] - _SHOW} more" if idx.shape[0] > _SHOW else ""
    return f"{idx.shape[0]} position(s): {'; '.join(parts)}{more}"


# --------------------------------------------------------------------------- C-REGRESS-1


def check_regress_values(
    loss: LossTarget, batch: MultiTaskBatch, *, term: str, baseline: LossTarget | str
) -> None:
    """C-REGRESS-1: ``term`` agrees with the baseline's wherever the baseline's is finite.

    Same shape and dtype; values within ``tolerance(batch dtype, n, scale)`` (``n``,
    ``scale`` as C-DEVICE-1). Nothing is compared where the baseline raised or is non-finite
    (C-REGRESS-2 judges outcomes); a candidate that raises there is left to C-REGRESS-2 too.

    Raises:
        ContractViolation: with both values, when they disagree.
        HarnessUsageError: on an unknown term or a batch without the term's head.
    """
    case, cand, base = _prepare("C-REGRESS-1", check_regress_values, loss, batch, term, baseline)
    if not base.finite or cand.value is None:
        return
    assert base.value is not None
    n, scale = _budget(case.batch, term)
    tol = tolerance(case.batch.dtype, n=n, scale=scale)
    values = {"candidate": cand.describe(), "baseline": base.describe()}
    if cand.value.shape != base.value.shape or cand.value.dtype != base.value.dtype:
        raise case.violation("the value changed its shape or dtype", values)
    message = _compare(cand.value, base.value, tol)
    if message is not None:
        raise case.violation(
            "the value differs from the baseline",
            {
                **values,
                "tolerance": _tolerance_text(tol, case.batch.dtype, n, scale),
                "comparison": message,
            },
        )


# --------------------------------------------------------------------------- C-REGRESS-2


def check_regress_outcome(
    loss: LossTarget, batch: MultiTaskBatch, *, term: str, baseline: LossTarget | str
) -> None:
    """C-REGRESS-2: finite wherever the baseline is finite; raises exactly where it raises.

    When both raise, the exceptions must be of the same family (``ValueError`` or not); the
    messages may differ. Where the baseline returns a non-finite value nothing is owed. Writing
    to the inputs (outputs or targets) in place where the baseline does not is a violation too.

    Raises:
        ContractViolation: with both outcomes, when the candidate's is worse or different.
        HarnessUsageError: on an unknown term or a batch without the term's head.
    """
    case, cand, base = _prepare("C-REGRESS-2", check_regress_outcome, loss, batch, term, baseline)
    outcomes = {"candidate": cand.describe(), "baseline": base.describe()}
    if cand.modified and not base.modified:
        raise case.violation("the candidate writes to its inputs, the baseline does not", outcomes)
    if base.error is not None:
        if cand.error is None:
            raise case.violation(
                "the baseline raises on this input, the candidate does not", outcomes
            )
        if _family(cand.error) != _family(base.error):
            raise case.violation(
                f"the candidate raises a different kind of exception "
                f"({_family(cand.error)} instead of {_family(base.error)})",
                outcomes,
            )
        return
    if not base.finite:
        return
    if cand.error is not None:
        raise case.violation(
            "the candidate raises where the baseline gives a finite value", outcomes
        )
    if not cand.finite:
        raise case.violation("the value is not finite where the baseline's is finite", outcomes)


# --------------------------------------------------------------------------- C-REGRESS-3


def _gradients(run: _Run) -> dict[str, Tensor | None]:
    """Gradient of the term for every output leaf (``None`` where the graph does not reach)."""
    assert run.value is not None
    assert run.batch is not None
    leaves = {k: v for k, v in run.batch.outputs.items() if v.requires_grad}
    if not run.value.requires_grad or not leaves:
        return dict.fromkeys(leaves)
    value = run.value if run.value.dim() == 0 else run.value.sum()
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, grads, strict=True))


def check_regress_gradients(
    loss: LossTarget, batch: MultiTaskBatch, *, term: str, baseline: LossTarget | str
) -> None:
    """C-REGRESS-3: gradients of ``term`` finite and equal to the baseline's where those are.

    Compared only where the baseline's forward gave a finite value. Per output, wherever the
    baseline gradient is finite the candidate's must be finite and within
    ``tolerance(batch dtype, n, scale = largest finite baseline gradient)``; a gradient the
    graph does not reach counts as zero.

    Raises:
        ContractViolation: with both gradients at the first positions that differ, or when
            the candidate's forward or backward raises where the baseline's does not.
        HarnessUsageError: on an unknown term or a batch without the term's head.
    """
    case, cand, base = _prepare("C-REGRESS-3", check_regress_gradients, loss, batch, term, baseline)
    if not base.finite:
        return
    try:
        base_grads = _gradients(base)
    except Exception:  # a baseline whose backward raises owes nothing
        return
    if cand.value is None:
        raise case.violation(
            "the candidate's forward raises where the baseline's gradients exist",
            {"candidate": cand.describe(), "baseline": base.describe()},
        )
    try:
        cand_grads = _gradients(cand)
    except Exception as exc:  # a backward that raises breaks training
        raise case.violation(
            "the candidate's backward raises where the baseline's does not",
            {"candidate": _exc(exc), "baseline": base.describe()},
        ) from exc
    n, _ = _budget(case.batch, term)
    for key, reached in base_grads.items():
        cg = cand_grads[key]
        if reached is not None and cg is None:
            raise case.violation(
                f"the candidate's graph no longer reaches outputs[{key!r}] (detached)",
                {
                    "candidate": f"{cand.describe()}; gradient None (not reached)",
                    "baseline": f"{base.describe()}; gradient summing to {_num(reached.sum())}",
                },
            )
        bg = reached if reached is not None else torch.zeros_like(case.batch.outputs[key])
        if cg is None:
            cg = torch.zeros_like(bg)
        owed = torch.isfinite(bg)
        finite = bg[owed]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        tol = tolerance(bg.dtype, n=n, scale=scale)
        if cg.shape != bg.shape:
            raise case.violation(
                f"gradient of {term} for outputs[{key!r}] changed shape",
                {"candidate": tuple(cg.shape), "baseline": tuple(bg.shape)},
            )
        cgd, bgd = cg.detach().cpu().double(), bg.detach().cpu().double()
        owed = owed.cpu()
        bad = owed & (~torch.isfinite(cgd) | ((cgd - bgd).abs() > tol.atol + tol.rtol * bgd.abs()))
        if bool(bad.any()):
            headline = (
                f"gradient of {term} for outputs[{key!r}] is not finite where the baseline's is"
                if bool((owed & ~torch.isfinite(cgd)).any())
                else f"gradient of {term} for outputs[{key!r}] differs from the baseline"
            )
            raise case.violation(
                headline,
                {
                    "candidate": f"{cand.describe()}; gradient at {_positions(bad, cgd)}",
                    "baseline": f"{base.describe()}; gradient at {_positions(bad, bgd)}",
                    "tolerance": _tolerance_text(tol, bg.dtype, n, scale),
                },
            )


# --------------------------------------------------------------------------- C-REGRESS-4


@dataclass(frozen=True)
class _MetricRun:
    result: Mapping[str, Any] | None = None
    error: BaseException | None = None

    def describe(self, keys: Sequence[str] | None = None) -> str:
        if self.error is not None:
            return _exc(self.error)
        assert self.result is not None
        shown = {k: v for k, v in self.result.items() if keys is None or k in keys}
        return ", ".join(f"{k}={_show(v)}" for k, v in shown.items())


def _show(value: Any) -> str:
    if isinstance(value, Tensor):
        return str(value.detach().cpu().tolist())
    if isinstance(value, float):
        return f"{value:.9g}"
    return repr(value)


def _metric_kwargs(data: MetricData) -> dict[str, Any]:
    if isinstance(data, ClassificationData) and data.num_classes is not None:
        return {"num_classes": data.num_classes}
    return {}


def _one_shot(metrics: MetricsTarget, metric: str, data: MetricData) -> _MetricRun:
    try:
        result = getattr(metrics, _METRIC_CALLS[metric][0])(*data.args(), **_metric_kwargs(data))
    except Exception as exc:  # the outcome itself is what is compared
        return _MetricRun(error=exc)
    if not isinstance(result, Mapping):
        return _MetricRun(error=TypeError(f"returned a {type(result).__name__}, not a dict"))
    return _MetricRun(result=result)


def _streamed(
    metrics: MetricsTarget, metric: str, data: MetricData, partition: Partition
) -> _MetricRun:
    try:
        state = getattr(metrics, _METRIC_CALLS[metric][1])(**_metric_kwargs(data))
        for start, stop in partition.bounds():
            state.update(*data.rows(start, stop).args())
        result = state.compute()
    except Exception as exc:  # the outcome itself is what is compared
        return _MetricRun(error=exc)
    if not isinstance(result, Mapping):
        return _MetricRun(error=TypeError(f"compute() returned a {type(result).__name__}"))
    return _MetricRun(result=result)


def _merged(
    metrics: MetricsTarget, metric: str, data: MetricData, partition: Partition, *, drained: bool
) -> _MetricRun:
    """One state per batch, merged left to right: the merged result.

    With ``drained``: the last non-empty merged-in state's own result afterwards instead
    (``merge`` must leave its argument as it was).
    """
    try:
        states = []
        for start, stop in partition.bounds():
            state = getattr(metrics, _METRIC_CALLS[metric][1])(**_metric_kwargs(data))
            state.update(*data.rows(start, stop).args())
            states.append(state)
        merged = states[0]
        for other in states[1:]:
            result = merged.merge(other)
            merged = merged if result is None else result
        # The last non-empty state merged into another (the merged state when there is none).
        merged_in = [i for i, size in enumerate(partition.sizes) if i > 0 and size > 0]
        result = (states[merged_in[-1]] if drained and merged_in else merged).compute()
    except Exception as exc:  # the outcome itself is what is compared
        return _MetricRun(error=exc)
    if not isinstance(result, Mapping):
        return _MetricRun(error=TypeError(f"compute() returned a {type(result).__name__}"))
    return _MetricRun(result=result)


def _as_array(value: Any) -> np.ndarray | None:
    """A result value as a float64 array, or ``None`` when it is not numeric."""
    if isinstance(value, Tensor):
        return np.asarray(value.detach().cpu().double().numpy())
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return np.asarray(float(value))
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return None
    return None


def _differs(cand: Any, base: Any, tol: Tolerance | None) -> str | None:
    """Why ``cand`` disagrees with ``base`` (``None``: it agrees or ``base`` is not finite)."""
    b, c = _as_array(base), _as_array(cand)
    if b is None:
        return None if cand == base else "not equal"
    if c is None or c.shape != b.shape:
        return "a different type or shape"
    owed = np.isfinite(b)
    if not owed.any():
        return None
    if not np.isfinite(c[owed]).all():
        return "not finite where the baseline is finite"
    if tol is None:
        return None if np.array_equal(c[owed], b[owed]) else "not exactly equal"
    gap = np.abs(c[owed] - b[owed])
    bound = tol.atol + tol.rtol * np.abs(b[owed])
    if (gap > bound).any():
        return f"differs by {float(gap.max()):.6g} (allowed {tol.describe()})"
    return None


def check_regress_metrics(
    metrics: MetricsTarget,
    data: MetricData,
    *,
    metric: str,
    baseline: MetricsTarget | str,
    partition: Partition | None = None,
    keys: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    device: str = "cpu",
) -> None:
    """C-REGRESS-4: one-shot, streamed and merged metrics agree with the baseline's.

    Both implementations get the same data one-shot, streamed over ``partition`` (default:
    one batch), and as one state per batch merged left to right (also comparing the last
    merged-in state's own result afterwards, which ``merge`` must not change). Outcomes must
    match (raises the same family where the baseline raises; returns where it returns).
    Every key of the baseline's result (or only ``keys``; never ``ignore``) must be in the
    candidate's: numbers within the C-METRIC-REF-1 tolerance of that key wherever the
    baseline's are finite, other values (the confusion matrix) exactly.

    Raises:
        ContractViolation: with both results, at the first disagreement.
        HarnessUsageError: on an unknown family or a case of the wrong type.
    """
    if metric not in METRIC_FAMILIES:
        raise HarnessUsageError(f"metric must be one of {', '.join(METRIC_FAMILIES)}")
    if not isinstance(data, _METRIC_DATA[metric]):
        raise HarnessUsageError(
            f"metric={metric!r} needs a {_METRIC_DATA[metric].__name__}, got {type(data).__name__}"
        )
    base_target = _metrics_baseline(baseline)
    moved = data.to(device)
    partition = partition or Partition((data.n_rows,))
    replay = ReplaySpec.of(
        check_regress_metrics,
        "metrics",
        data=data,
        metric=metric,
        baseline=base_target.spec,
        partition=partition,
        keys=None if keys is None else list(keys),
        ignore=list(ignore),
        device=device,
    )
    tols = _tolerances(metric, data)
    runs: tuple[tuple[str, Callable[[MetricsTarget], _MetricRun]], ...] = (
        ("one-shot", lambda m: _one_shot(m, metric, moved)),
        (f"streamed over {partition.describe()}", lambda m: _streamed(m, metric, moved, partition)),
        (
            f"merged over {partition.describe()}",
            lambda m: _merged(m, metric, moved, partition, drained=False),
        ),
        (
            f"last state merged in over {partition.describe()}, afterwards",
            lambda m: _merged(m, metric, moved, partition, drained=True),
        ),
    )
    for how, run in runs:
        _compare_metric_runs(
            _MetricCase(metric, how, data, device, base_target.spec, replay),
            run(metrics),
            run(base_target),
            tols,
            keys=keys,
            ignore=ignore,
        )


@dataclass(frozen=True)
class _MetricCase:
    metric: str
    how: str
    data: MetricData
    device: str
    baseline: str
    replay: ReplaySpec

    def violation(
        self,
        term: str,
        headline: str,
        cand: _MetricRun,
        base: _MetricRun,
        shown: Sequence[str] | None = None,
    ) -> ContractViolation:
        details = {
            "input": self.data.describe(),
            "device": self.device,
            "candidate": cand.describe(shown),
            "baseline": base.describe(shown),
            "baseline target": self.baseline,
        }
        return ContractViolation(
            "C-REGRESS-4", term, f"{self.how}: {headline}", details=details, replay=self.replay
        )


def _compare_metric_runs(
    case: _MetricCase,
    cand: _MetricRun,
    base: _MetricRun,
    tols: Mapping[str, Tolerance],
    *,
    keys: Sequence[str] | None,
    ignore: Sequence[str],
) -> None:
    metric = case.metric
    if base.error is not None:
        if cand.error is None:
            raise case.violation(metric, "the baseline raises, the candidate does not", cand, base)
        if _family(cand.error) != _family(base.error):
            raise case.violation(
                metric,
                f"the candidate raises {_family(cand.error)} where the baseline raises "
                f"{_family(base.error)}",
                cand,
                base,
            )
        return
    if cand.error is not None:
        raise case.violation(metric, "the candidate raises where the baseline returns", cand, base)
    assert base.result is not None
    assert cand.result is not None
    for key in base.result:
        if (keys is not None and key not in keys) or key in ignore:
            continue
        if key not in cand.result:
            raise case.violation(f"{metric}.{key}", f"the candidate lacks {key!r}", cand, base)
        why = _differs(cand.result[key], base.result[key], tols.get(key))
        if why is not None:
            raise case.violation(f"{metric}.{key}", f"{key} {why}", cand, base, [key])
