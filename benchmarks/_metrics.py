"""Streaming metrics: ``update`` over ragged batches then ``compute``, against baselines.

Candidates, each fed the same ragged batches:

* ``aam``: ``aam.training.metrics``' streaming classes.
* ``python_loop``: the per-element Python loop these metrics are often written as (running
  sums, Welford's mean/M2 for R², a list-of-lists confusion matrix). Each batch is turned into
  Python numbers with ``.tolist()`` first — the fastest way to loop in Python, so this ratio is
  the conservative one. Run on a subsample to keep the time sane; compared in elements/s.
* ``python_loop_item``: the same loop reading one element at a time (``x[i].item()``), as
  naive training code often does; on a ten times smaller subsample.
* ``torchmetrics``: its equivalent metrics in a ``MetricCollection`` (when importable; the
  masked count metrics are fed the boolean-selected valid entries, as one would with it).

An *element* is one regression value, one classified sample, or one count position (valid or
padded) of a ``[B, A, 1]`` batch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aam.training import metrics as aam_metrics
from benchmarks._timing import compare, synchronizer

__all__ = [
    "COUNT_ASVS",
    "METRIC_FAMILIES",
    "NUM_CLASSES",
    "Stream",
    "bench_streaming",
    "make_stream",
    "python_loop",
    "ragged_sizes",
    "run_aam",
    "torchmetrics_available",
]

#: The metric families benchmarked.
METRIC_FAMILIES = ("regression", "classification", "count")
#: Classes of the classification stream (AAM classifiers have a handful).
NUM_CLASSES = 5
#: ASVs per row of the count stream.
COUNT_ASVS = 32


@dataclass
class Stream:
    """Ragged batches of one metric family.

    Attributes:
        family: one of :data:`METRIC_FAMILIES`.
        batches: the positional arguments of each ``update`` call.
        elements: total elements over all batches.
    """

    family: str
    batches: list[tuple[Tensor, ...]]
    elements: int


def ragged_sizes(total: int, mean: int, generator: torch.Generator) -> list[int]:
    """Batch sizes drawn uniformly from ``[0, 2 * mean]`` (empty batches included) summing to total.

    Raises:
        ValueError: if ``total < 0`` or ``mean < 1``.
    """
    if total < 0 or mean < 1:
        raise ValueError(f"need total >= 0 and mean >= 1, got total={total}, mean={mean}")
    sizes: list[int] = []
    left = total
    while left > 0:
        draws = torch.randint(0, 2 * mean + 1, (max(16, 2 * left // mean),), generator=generator)
        for size in draws.tolist():
            size = min(size, left)
            sizes.append(size)
            left -= size
            if left == 0:
                break
    return sizes


def make_stream(
    family: str, elements: int, mean_batch: int, *, device: torch.device, seed: int = 0
) -> Stream:
    """Ragged batches of about ``elements`` elements for one metric family.

    Args:
        family: ``"regression"`` (float32 values, ``[n]``), ``"classification"`` (``[n, K]``
            log-probabilities and ``[n]`` ids, K = :data:`NUM_CLASSES`) or ``"count"``
            (``[b, COUNT_ASVS, 1]`` float32 counts and a ``[b, COUNT_ASVS]`` bool mask with
            ~30% trailing padding; ``elements`` and ``mean_batch`` are rounded to whole rows).
        elements: total elements.
        mean_batch: mean elements per ``update``.
        device: where the tensors live.
        seed: generator seed.

    Raises:
        ValueError: for an unknown family.
    """
    gen = torch.Generator().manual_seed(seed)
    batches: list[tuple[Tensor, ...]] = []
    if family == "regression":
        for n in ragged_sizes(elements, mean_batch, gen):
            true = torch.randn(n, generator=gen) * 3.0 + 10.0
            pred = true + torch.randn(n, generator=gen)
            batches.append((pred, true))
    elif family == "classification":
        for n in ragged_sizes(elements, mean_batch, gen):
            true = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
            scores = torch.randn(n, NUM_CLASSES, generator=gen)
            # Make the prediction right about 70% of the time, like a trained classifier.
            right = torch.rand(n, generator=gen) < 0.7
            scores[right, true[right]] += 4.0
            batches.append((torch.log_softmax(scores, dim=1), true))
    elif family == "count":
        rows = ragged_sizes(
            max(1, round(elements / COUNT_ASVS)), max(1, round(mean_batch / COUNT_ASVS)), gen
        )
        for b in rows:
            true = torch.rand(b, COUNT_ASVS, 1, generator=gen) * 100.0
            pred = true + torch.randn(b, COUNT_ASVS, 1, generator=gen)
            kept = torch.randint(
                COUNT_ASVS // 2, COUNT_ASVS - COUNT_ASVS // 10 + 1, (b, 1), generator=gen
            )
            mask = torch.arange(COUNT_ASVS) < kept
            batches.append((pred, true, mask))
    else:
        raise ValueError(f"unknown metric family {family!r}; expected one of {METRIC_FAMILIES}")
    batches = [tuple(t.to(device) for t in batch) for batch in batches]
    total = sum(batch[0].shape[0] * (COUNT_ASVS if family == "count" else 1) for batch in batches)
    return Stream(family, batches, total)


# ------------------------------------------------------------------------------ candidates


def run_aam(stream: Stream) -> dict[str, Any]:
    """Feed every batch to the ``aam`` streaming metric, then ``compute``."""
    state: Any
    if stream.family == "regression":
        state = aam_metrics.StreamingRegressionMetrics()
    elif stream.family == "classification":
        state = aam_metrics.StreamingClassificationMetrics(num_classes=NUM_CLASSES)
    else:
        state = aam_metrics.StreamingCountMetrics()
    for batch in stream.batches:
        state.update(*batch)
    return dict(state.compute())


def _elements(t: Tensor, itemwise: bool) -> Iterator[Any]:
    """The entries (rows of a 2-D tensor, as lists) of ``t``, bulk-converted or one at a time."""
    if not itemwise:
        yield from t.tolist()
    elif t.dim() == 1:
        for i in range(t.shape[0]):
            yield t[i].item()
    else:
        for i in range(t.shape[0]):
            yield t[i].tolist()


def _loop_regression(batches: Sequence[tuple[Tensor, ...]], itemwise: bool) -> dict[str, float]:
    n, mean, m2, abs_sum, sq_sum = 0, 0.0, 0.0, 0.0, 0.0
    for pred, true in batches:
        for p, t in zip(_elements(pred, itemwise), _elements(true, itemwise), strict=True):
            n += 1
            d = p - t
            abs_sum += abs(d)
            sq_sum += d * d
            delta = t - mean
            mean += delta / n
            m2 += delta * (t - mean)
    if n == 0:
        return {"mae": 0.0, "mse": 0.0, "r2": 0.0}
    return {"mae": abs_sum / n, "mse": sq_sum / n, "r2": 1.0 - sq_sum / m2 if m2 else 0.0}


def _loop_classification(batches: Sequence[tuple[Tensor, ...]], itemwise: bool) -> dict[str, float]:
    k = NUM_CLASSES
    cm = [[0] * k for _ in range(k)]
    for scores, true in batches:
        for row, t in zip(_elements(scores, itemwise), _elements(true, itemwise), strict=True):
            cm[t][row.index(max(row))] += 1
    n = sum(map(sum, cm))
    if n == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    support = [sum(cm[i]) for i in range(k)]
    predicted = [sum(cm[i][j] for i in range(k)) for j in range(k)]
    tp = [cm[i][i] for i in range(k)]

    def weighted(num: list[int], den: list[int]) -> float:
        return sum(s * (x / d if d else 0.0) for s, x, d in zip(support, num, den, strict=True)) / n

    return {
        "accuracy": sum(tp) / n,
        "precision": weighted(tp, predicted),
        "recall": weighted(tp, support),
        "f1": weighted(
            [2 * x for x in tp], [s + p for s, p in zip(support, predicted, strict=True)]
        ),
    }


def _loop_count(batches: Sequence[tuple[Tensor, ...]], itemwise: bool) -> dict[str, float]:
    n, abs_sum, sq_sum = 0, 0.0, 0.0
    for pred, true, mask in batches:
        for p, t, m in zip(
            _elements(pred.reshape(-1), itemwise),
            _elements(true.reshape(-1), itemwise),
            _elements(mask.reshape(-1), itemwise),
            strict=True,
        ):
            if m:
                n += 1
                d = p - t
                abs_sum += abs(d)
                sq_sum += d * d
    return {"mae": abs_sum / n, "mse": sq_sum / n} if n else {"mae": 0.0, "mse": 0.0}


_LOOPS: dict[str, Callable[[Sequence[tuple[Tensor, ...]], bool], dict[str, float]]] = {
    "regression": _loop_regression,
    "classification": _loop_classification,
    "count": _loop_count,
}


def python_loop(stream: Stream, *, itemwise: bool = False) -> dict[str, float]:
    """The per-element Python-loop baseline over every batch of ``stream``.

    Args:
        stream: the batches.
        itemwise: read elements one at a time (``x[i].item()``) instead of bulk ``.tolist()``.
    """
    return _LOOPS[stream.family](stream.batches, itemwise)


def torchmetrics_available() -> bool:
    """Whether the optional ``torchmetrics`` (the ``bench`` extra) is importable."""
    return importlib.util.find_spec("torchmetrics") is not None


def _torchmetrics_runner(stream: Stream) -> Callable[[], dict[str, Any]]:
    """A callable feeding ``stream`` to torchmetrics' equivalent metrics, then computing."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )
    from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

    device = stream.batches[0][0].device if stream.batches else torch.device("cpu")
    if stream.family == "regression":
        collection = MetricCollection(
            {"mae": MeanAbsoluteError(), "mse": MeanSquaredError(), "r2": R2Score()}
        )
    elif stream.family == "classification":
        k = NUM_CLASSES
        collection = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(k, average="micro"),
                "precision": MulticlassPrecision(k, average="weighted"),
                "recall": MulticlassRecall(k, average="weighted"),
                "f1": MulticlassF1Score(k, average="weighted"),
                "confusion_matrix": MulticlassConfusionMatrix(k),
            }
        )
    else:
        collection = MetricCollection({"mae": MeanAbsoluteError(), "mse": MeanSquaredError()})
    collection = collection.to(device)

    def run() -> dict[str, Any]:
        collection.reset()
        for batch in stream.batches:
            if stream.family == "count":
                pred, true, mask = batch
                valid = mask.unsqueeze(-1)
                collection.update(pred[valid], true[valid])
            elif batch[0].shape[0]:  # torchmetrics rejects some empty batches
                collection.update(*batch)
        return {k: v for k, v in collection.compute().items()}

    return run


def _max_rel_diff(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    worst = 0.0
    for key, value in theirs.items():
        if key == "confusion_matrix":
            continue
        a, b = float(ours[key]), float(value)
        worst = max(worst, abs(a - b) / max(abs(b), 1e-30))
    return worst


def bench_streaming(
    family: str,
    *,
    elements: int,
    loop_elements: int,
    mean_batch: int,
    small_batch: int,
    small_elements: int,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    """Elements per second of ``aam``, the Python loop and torchmetrics for one family.

    Args:
        family: one of :data:`METRIC_FAMILIES`.
        elements: elements fed to ``aam`` and torchmetrics.
        loop_elements: elements fed to the Python loop (a subsample: it is slow); the
            item-wise loop gets a tenth of that.
        mean_batch: mean elements per ``update``.
        small_batch: mean elements per ``update`` of the small-batch run (per-call overhead,
            e.g. one AAM step's 16 samples).
        small_elements: elements of the small-batch run.
        repeats: timed rounds (median reported).
        warmup: untimed rounds first.
        device: where the ``aam`` and torchmetrics tensors live (the loop reads them back).

    Returns:
        JSON-ready dict with ``elements``, ``updates``, ``elements_per_s`` and ``seconds`` per
        candidate, ``ratios`` (``vs_python_loop``, ``vs_torchmetrics``), ``small_batch`` and
        ``rel_diff`` (aam vs the loop on the loop's subsample).
    """
    sync = synchronizer(device)
    big = make_stream(family, elements, mean_batch, device=device, seed=1)
    sub = make_stream(family, loop_elements, mean_batch, device=device, seed=2)
    tiny = make_stream(family, max(1, loop_elements // 10), mean_batch, device=device, seed=5)
    small = make_stream(family, small_elements, small_batch, device=device, seed=3)
    have_tm = torchmetrics_available()

    candidates: dict[str, Callable[[], object]] = {
        "aam": lambda: run_aam(big),
        "python_loop": lambda: python_loop(sub),
        "python_loop_item": lambda: python_loop(tiny, itemwise=True),
    }
    sizes = {"aam": big, "python_loop": sub, "python_loop_item": tiny}
    if have_tm:
        candidates["torchmetrics"] = _torchmetrics_runner(big)
        sizes["torchmetrics"] = big
    timings = compare(candidates, repeats=repeats, warmup=warmup, sync=sync)
    rates = {name: sizes[name].elements / t.median_s for name, t in timings.items()}

    small_candidates: dict[str, Callable[[], object]] = {"aam": lambda: run_aam(small)}
    if have_tm:
        small_candidates["torchmetrics"] = _torchmetrics_runner(small)
    small_timings = compare(small_candidates, repeats=repeats, warmup=warmup, sync=sync)
    updates = max(1, len(small.batches))

    result: dict[str, Any] = {
        "elements": {name: s.elements for name, s in sizes.items()},
        "updates": {name: len(s.batches) for name, s in sizes.items()},
        "mean_batch": mean_batch,
        "seconds": {name: t.to_plain() for name, t in timings.items()},
        "elements_per_s": rates,
        "ratios": {
            "vs_python_loop": rates["aam"] / rates["python_loop"],
            "vs_python_loop_item": rates["aam"] / rates["python_loop_item"],
            "vs_torchmetrics": rates["aam"] / rates["torchmetrics"] if have_tm else None,
        },
        "small_batch": {
            "mean_batch": small_batch,
            "elements": small.elements,
            "updates": len(small.batches),
            "elements_per_s": {
                name: small.elements / t.median_s for name, t in small_timings.items()
            },
            "us_per_update": {
                name: 1e6 * t.median_s / updates for name, t in small_timings.items()
            },
        },
        "rel_diff": {
            "vs_python_loop": _max_rel_diff(run_aam(sub), python_loop(sub)),
            "vs_python_loop_item": _max_rel_diff(run_aam(tiny), python_loop(tiny, itemwise=True)),
        },
    }
    if have_tm:
        result["rel_diff"]["vs_torchmetrics"] = _max_rel_diff(
            run_aam(big), _torchmetrics_runner(big)()
        )
    return result
