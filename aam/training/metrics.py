"""Regression, classification and count metrics, one-shot and streaming.

Each family has a streaming class (``update`` / ``compute`` / ``merge`` / ``reset``) and a
one-shot function that *is* that class fed once, so there is one formula, not two. State is a
handful of float64 sums and int64 (or exact Python integer) counts: its memory does not depend
on how much data was fed, and two states merge exactly as a distributed sync needs (counts and
sums add; the targets' mean and M2 combine with Chan's parallel formula). ``update`` is made of
tensor reductions (``bincount`` for the confusion matrix); its only host sync is the input
validation, one fused reduction per call. ``compute`` returns Python floats (a host sync by
nature) and, for classification, an int64 confusion matrix on the cpu.

R² is ``1 - SSE / M2`` where M2, the targets' sum of squared deviations, is kept as count, mean
and M2 (Welford/Chan) in float64, never as ``sum(y²) - sum(y)²/n``: that difference cancels
catastrophically for targets far from zero (float64 ``1e8 + noise``, float32 around ``1e4``).

Edge cases (contract rule C-METRIC-EDGE-1), all finite and exact:

* **No data** (no elements, no valid count positions, no samples): every number is 0.0; the
  confusion matrix is all zeros, ``[K, K]`` for the K known so far (``[0, 0]`` if none).
* **Constant targets** (decided on the values: every target equal, so a rounding residue in a
  computed variance never counts as spread): R² is 1.0 if every prediction equals its target,
  else 0.0 (scikit-learn's ``force_finite`` convention). A **single sample** is this case.
  Targets whose spread is so small that squared deviations underflow float64 (below about
  1e-154) are treated the same way rather than dividing by zero.
* **Absent classes** (never true, never predicted, or both) have support 0: they count in the
  weighted precision/recall/F1 with weight 0, and a class never predicted has precision 0
  (``zero_division=0``), exactly as ``precision_recall_fscore_support(average="weighted",
  zero_division=0)`` defines them.
* **Predictions** are ``[B, K]`` scores, logits or log-probabilities (the class is the argmax,
  the first one on ties) or ``[B]`` class ids (integer, or floating with integral values);
  both forms give identical results. K is ``num_classes`` when given, else the width of
  ``[B, K]`` predictions, else the largest id seen + 1 (the streaming confusion matrix grows as
  new ids appear, and ``merge`` pads to the larger size).

Distributed sync (contract rule C-DDP-1): every streaming class has
``sync_distributed(group=None)``, a collective that replaces each rank's state by the state of
the whole data set (every rank's data), equal to one process fed everything. Every rank must
call it, a rank that saw no data included (it takes part in every collective; there is no early
return). Counts stay exact (int64) and sums float64; regression states are all_gathered and
merged in rank order with the same Chan update as ``merge`` (deterministic, identical on every
rank, never an average of means); confusion matrices first agree on one size (all_reduce MAX),
then are padded and summed (all_reduce SUM). Without an initialized process group it is a no-op
(one process already holds everything). Call it once, after the last ``update``: a second call
counts the other ranks' data again (sync a ``copy.deepcopy`` to keep streaming per rank).

Invalid input raises ``ValueError`` (``TypeError`` for a non-tensor): inputs whose element
counts or shapes differ (never broadcast, never sliced), class ids that are negative or
``>= K`` (never wrapped around), non-integral float ids, and NaN/±inf values at valid
positions (the message names the argument and how many entries are bad). Padded count
positions (``mask == 0``) may hold anything; they are removed by selection, never read.

Example:
    >>> import torch
    >>> r = compute_regression_metrics(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 2.0, 3.0]))
    >>> round(r["mse"], 4), round(r["r2"], 4)
    (0.3333, 0.5)
    >>> state = StreamingClassificationMetrics(num_classes=3)
    >>> state.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
    >>> state.update(torch.tensor([1]), torch.tensor([1]))
    >>> state.compute()["accuracy"]
    0.6666666666666666
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NoReturn, Self

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from aam.training._collectives import all_gather_stacked, communication_device, is_distributed

__all__ = [
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
    "StreamingRegressionMetrics",
    "compute_classification_metrics",
    "compute_count_metrics",
    "compute_regression_metrics",
]

_F64 = torch.float64
_I64 = torch.int64
_CPU = torch.device("cpu")
#: Stands in for "no num_classes" in sync_distributed's MAX reduction of -num_classes.
_NO_LIMIT = 2**62


# --------------------------------------------------------------------------- validation


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _tensor(metric: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{metric}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise ValueError(f"{metric}: {name} must be real, got dtype {value.dtype}")
    # Metrics never take part in autograd; detaching also keeps the state graph-free.
    return value.detach()


def _same_device(metric: str, named: dict[str, Tensor]) -> torch.device:
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in named.items())
        raise ValueError(f"{metric}: inputs must be on one device, got {where}")
    return next(iter(devices))


def _nonfinite_count(t: Tensor, valid: Tensor | None = None) -> Tensor:
    """0-dim int64: how many entries of ``t`` (at ``valid`` positions) are NaN or ±inf."""
    if not t.is_floating_point():
        return torch.zeros((), dtype=_I64, device=t.device)
    bad = ~torch.isfinite(t)
    if valid is not None:
        bad = bad & valid
    return bad.sum(dtype=_I64)


def _raise_nonfinite(
    metric: str, name: str, t: Tensor, count: int, valid: Tensor | None = None
) -> NoReturn:
    """Error path only (may sync freely): name the argument, the count and the first bad entry."""
    bad = ~torch.isfinite(t)
    if valid is not None:
        bad = bad & valid
        where = f" at valid positions (of {int(valid.sum())} valid)"
    else:
        where = f" (of {t.numel()})"
    first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
    index = first[0] if len(first) == 1 else first
    raise ValueError(
        f"{metric}: {name} has {count} non-finite value(s){where}; first at {index} = "
        f"{float(t[first])}. Metrics need finite inputs: find where the NaN/inf comes from"
    )


def _validate_num_classes(num_classes: object) -> int | None:
    if num_classes is None:
        return None
    # numbers.Integral admits NumPy integers; bool is an Integral but never a class count.
    k = 0
    if isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool):
        k = int(num_classes)
    if k < 1:
        raise ValueError(
            f"num_classes must be a positive integer or None (inferred from the data), "
            f"got num_classes={num_classes!r}"
        )
    return k


def _other_state(self: object, other: object) -> None:
    if type(other) is not type(self):
        raise TypeError(
            f"{type(self).__name__}.merge needs another {type(self).__name__}, "
            f"got {type(other).__name__}"
        )


# --------------------------------------------------------------------------- regression

_REGRESSION = "regression metrics"


def _flat_pair(y_pred: object, y_true: object) -> tuple[Tensor, Tensor]:
    """Validate and flatten regression inputs to float64 (exact for every input dtype)."""
    pred = _tensor(_REGRESSION, "y_pred", y_pred)
    true = _tensor(_REGRESSION, "y_true", y_true)
    _same_device(_REGRESSION, {"y_pred": pred, "y_true": true})
    if pred.numel() != true.numel():
        raise ValueError(
            f"{_REGRESSION}: y_pred shape {_shape(pred)} ({pred.numel()} elements) does not "
            f"match y_true shape {_shape(true)} ({true.numel()} elements); both are flattened, "
            "so they must have the same number of elements (no broadcasting)"
        )
    return pred.reshape(-1), true.reshape(-1)


def _raise_if_nonfinite(pred: Tensor, true: Tensor, extremes: Tensor) -> None:
    """Raise for NaN/±inf in either input, read off their minima and maxima (one sync).

    ``extremes`` holds both inputs' minimum and maximum: NaN propagates into min and max and
    ±inf is an extreme, so they are all finite exactly when every element is. This replaces
    an ``isfinite`` pass over each input.
    """
    if not bool(torch.isfinite(extremes).all()):  # the one host sync of an update
        for name, t in (("y_pred", pred), ("y_true", true)):
            count = int(_nonfinite_count(t))
            if count:
                _raise_nonfinite(_REGRESSION, name, t, count)


class StreamingRegressionMetrics:
    """Streaming MAE, MSE and R² of flattened predictions against targets.

    State: the number of elements (an exact Python integer), float64 sums of ``|d|`` and ``d²``
    (``d = y_pred - y_true``), the targets' mean and M2 (sum of squared deviations from the
    mean), and the targets' minimum and maximum (to recognise constant targets exactly).

    Example:
        >>> state = StreamingRegressionMetrics()
        >>> state.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
        >>> state.update(torch.tensor([[4.0]]), torch.tensor([3.0]))
        >>> round(state.compute()["r2"], 4)
        0.5
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all data (the state of a freshly built object)."""
        zero = torch.zeros((), dtype=_F64)
        self._n = 0
        self._mean, self._m2, self._abs, self._sq = zero, zero, zero, zero
        self._lo = torch.full((), math.inf, dtype=_F64)
        self._hi = torch.full((), -math.inf, dtype=_F64)

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self._mean, self._m2, self._abs, self._sq, self._lo, self._hi)

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add a batch; both inputs are flattened (any shapes with equal element counts).

        Args:
            y_pred: predictions, any real dtype and shape.
            y_true: targets with as many elements as ``y_pred``.

        Raises:
            ValueError: if the element counts differ, the inputs are on different devices, or
                an input holds NaN/±inf.
            TypeError: if an input is not a tensor.
        """
        pred, true = _flat_pair(y_pred, y_true)
        n = true.numel()
        if n == 0:
            return
        # Both inputs in one float64 [2, n] tensor (exact for every input dtype), so one
        # aminmax gives the extremes that both the finiteness check and the state need.
        # (Each side is converted before stacking: stack would promote int64 with float32 to
        # float32 and round large integers.)
        both = torch.empty((2, n), dtype=_F64, device=true.device)
        both[0].copy_(pred)
        both[1].copy_(true)
        lo, hi = torch.aminmax(both, dim=1)
        _raise_if_nonfinite(pred, true, torch.cat((lo, hi)))
        pred64, true64 = both[0], both[1]
        mean = true64.mean()
        dev = true64 - mean
        # The first mean of values far from zero is off by a few ulps of the values; the mean
        # of the deviations corrects it, and M2 about the corrected mean is
        # sum(dev²) - n·corr² (exact algebra, no second deviation pass).
        corr = dev.mean()
        m2 = ((dev * dev).sum() - corr * corr * n).clamp(min=0.0)
        diff = pred64 - true64
        self._combine(
            n,
            mean + corr,
            m2,
            torch.linalg.vector_norm(diff, 1),
            (diff * diff).sum(),
            lo[1],
            hi[1],
        )

    def _combine(
        self,
        n: int,
        mean: Tensor,
        m2: Tensor,
        abs_sum: Tensor,
        sq_sum: Tensor,
        lo: Tensor,
        hi: Tensor,
    ) -> None:
        """Chan's parallel update with a batch (or another state) of ``n > 0`` elements."""
        device = mean.device
        if self._n == 0:
            # Adopt exactly (copies: never alias another state's tensors).
            self._mean, self._m2, self._abs, self._sq, self._lo, self._hi = (
                t.to(device, copy=True) for t in (mean, m2, abs_sum, sq_sum, lo, hi)
            )
            self._n = n
            return
        s_mean, s_m2, s_abs, s_sq, s_lo, s_hi = (t.to(device) for t in self._tensors())
        total = self._n + n
        delta = mean - s_mean
        # Symmetric in the two sides except for the mean's final rounding: the M2 correction
        # weight n_a·n_b/n is computed exactly in Python integers before one rounding.
        self._mean = s_mean + delta * (n / total)
        self._m2 = (s_m2 + m2) + delta * delta * (self._n * n / total)
        self._abs = s_abs + abs_sum
        self._sq = s_sq + sq_sum
        self._lo = torch.minimum(s_lo, lo)
        self._hi = torch.maximum(s_hi, hi)
        self._n = total

    def merge(self, other: StreamingRegressionMetrics) -> Self:
        """Fold ``other``'s data into this state (in place); ``other`` is left unchanged.

        Returns:
            ``self``, so merges chain.

        Raises:
            TypeError: if ``other`` is not a :class:`StreamingRegressionMetrics`.
        """
        _other_state(self, other)
        if other._n:
            self._combine(other._n, *other._tensors())
        return self

    def sync_distributed(self, group: dist.ProcessGroup | None = None) -> None:
        """Replace this rank's state by the whole data set's (a collective; see the module doc).

        Every rank's count and statistics are all_gathered and merged in rank order with
        Chan's update, so every rank ends with the identical state. No-op without an
        initialized process group.

        Args:
            group: the process group (default: the default group).
        """
        if not is_distributed():
            return
        device = self._mean.device
        comm = communication_device(group)
        counts = all_gather_stacked(torch.tensor([self._n], dtype=_I64, device=comm), group=group)
        stats = all_gather_stacked(torch.stack(self._tensors()), group=group).to(device)
        self.reset()
        # A loop over ranks, not elements; rank order makes the result identical everywhere.
        for n, row in zip(counts[:, 0].tolist(), stats, strict=True):
            if n:
                self._combine(n, *row.unbind())

    def compute(self) -> dict[str, float]:
        """``{"mae", "mse", "r2"}`` of everything fed so far (see the module doc for edges)."""
        if self._n == 0:
            return {"mae": 0.0, "mse": 0.0, "r2": 0.0}
        abs_sum, sq_sum, m2, lo, hi = torch.stack(
            [self._abs, self._sq, self._m2, self._lo, self._hi]
        ).tolist()
        if lo == hi or not m2 > 0.0:
            r2 = 1.0 if abs_sum == 0.0 else 0.0
        else:
            r2 = 1.0 - sq_sum / m2
        return {"mae": abs_sum / self._n, "mse": sq_sum / self._n, "r2": r2}


def compute_regression_metrics(y_pred: Tensor, y_true: Tensor) -> dict[str, float]:
    """MAE, MSE and R² of flattened inputs (a :class:`StreamingRegressionMetrics` fed once).

    Args:
        y_pred: predictions, any shape.
        y_true: targets with the same number of elements.

    Returns:
        ``{"mae", "mse", "r2"}`` as Python floats; no data gives 0.0 everywhere, constant
        targets give R² = 1.0 for perfect predictions, else 0.0.

    Raises:
        ValueError: if the element counts differ or an input holds NaN/±inf.
        TypeError: if an input is not a tensor.
    """
    state = StreamingRegressionMetrics()
    state.update(y_pred, y_true)
    return state.compute()


# --------------------------------------------------------------------------- classification

_CLASSIFICATION = "classification metrics"


def _id_stats(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(ids, [non-finite, non-integral, min, max])`` of 1-D ids, int64, on ``t``'s device."""
    if t.is_floating_point():
        finite = torch.isfinite(t)
        clean = torch.where(finite, t, 0.0)
        bad = (~finite).sum(dtype=_I64)
        fractional = (clean != clean.round()).sum(dtype=_I64)
        # Clamped so that a huge float id casts to a (still out-of-range) int64, not to
        # whatever an overflowing cast yields.
        ids = clean.clamp(-(2.0**62), 2.0**62).to(_I64)
    else:
        bad = fractional = torch.zeros((), dtype=_I64, device=t.device)
        ids = t.to(_I64)
    return ids, torch.stack([bad, fractional, ids.min(), ids.max()])


def _raise_bad_ids(name: str, t: Tensor, ids: Tensor, stats: list[int], k: int | None) -> None:
    """Raise if the ids summarised by ``stats`` are not integral ids in ``[0, k)``."""
    bad, fractional, low, high = stats
    if bad:
        _raise_nonfinite(_CLASSIFICATION, name, t, bad)
    if fractional:
        first = int(torch.nonzero(t != t.round())[0, 0])
        raise ValueError(
            f"{_CLASSIFICATION}: {name} must hold integral class ids, got {fractional} "
            f"non-integral value(s); first at {first} = {float(t[first])}"
        )
    if low < 0 or (k is not None and high >= k):
        upper = high + 1 if k is None else k
        outside = (ids < 0) | (ids >= upper)
        first = int(torch.nonzero(outside)[0, 0])
        bound = f"[0, {k})" if k is not None else "[0, num_classes)"
        fix = "ids must be >= 0" if low < 0 else "fix the labels or pass a larger num_classes"
        raise ValueError(
            f"{_CLASSIFICATION}: {name} has {int(outside.sum())} class id(s) outside {bound}; "
            f"first at {first} = {t[first].item()}. Ids are never wrapped around: {fix}"
        )


class StreamingClassificationMetrics:
    """Streaming accuracy, weighted precision/recall/F1 and the confusion matrix.

    State: one int64 ``[K, K]`` confusion matrix (rows true, columns predicted). With
    ``num_classes=None`` K grows as new ids appear (or to the width of ``[B, K]`` predictions).

    Args:
        num_classes: the number of classes K, or ``None`` to infer it from the data.

    Raises:
        ValueError: if ``num_classes`` is not a positive integer or ``None``.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = _validate_num_classes(num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget all data; the matrix goes back to ``[num_classes, num_classes]`` (or empty)."""
        k = self.num_classes or 0
        self._cm = torch.zeros((k, k), dtype=_I64)

    def _grown(self, k: int, device: torch.device) -> Tensor:
        """The matrix on ``device``, zero-padded to at least ``[k, k]`` (never in place)."""
        cm = self._cm.to(device)
        extra = k - cm.shape[0]
        return F.pad(cm, (0, extra, 0, extra)) if extra > 0 else cm

    def _class_ids(self, y_pred: object, y_true: object) -> tuple[Tensor, Tensor, int]:
        """Validated ``(pred_ids, true_ids, k)``: 1-D int64 ids in ``[0, k)``.

        ``k`` is the number of classes this batch allows: ``num_classes``, else the width of
        ``[B, K]`` predictions, else the largest id + 1 (at least the current matrix size).
        """
        pred = _tensor(_CLASSIFICATION, "y_pred", y_pred)
        true = _tensor(_CLASSIFICATION, "y_true", y_true)
        _same_device(_CLASSIFICATION, {"y_pred": pred, "y_true": true})
        if true.dim() != 1:
            raise ValueError(
                f"{_CLASSIFICATION}: y_true must be [B] class ids, got shape {_shape(true)}"
                + ("; squeeze the last dimension" if true.dim() == 2 and true.shape[1] == 1 else "")
            )
        if pred.dim() not in (1, 2):
            raise ValueError(
                f"{_CLASSIFICATION}: y_pred must be [B, K] scores/log-probabilities or [B] class "
                f"ids, got shape {_shape(pred)}"
            )
        if pred.shape[0] != true.shape[0]:
            raise ValueError(
                f"{_CLASSIFICATION}: y_pred shape {_shape(pred)} has {pred.shape[0]} sample(s) "
                f"but y_true shape {_shape(true)} has {true.shape[0]}; they must match"
            )
        k = self.num_classes
        if pred.dim() == 2:
            width = pred.shape[1]
            if k is not None and width != k:
                raise ValueError(
                    f"{_CLASSIFICATION}: y_pred shape {_shape(pred)} has {width} class "
                    f"column(s) but num_classes={k}"
                )
            if width == 0 and pred.shape[0] > 0:
                raise ValueError(
                    f"{_CLASSIFICATION}: y_pred shape {_shape(pred)} has no class columns"
                )
            k = width
        if true.numel() == 0:
            return true.to(_I64), true.to(_I64), k if k is not None else 0
        true_ids, true_stats = _id_stats(true)
        if pred.dim() == 2:
            pred_ids = pred.argmax(dim=1)
            stats = torch.cat([true_stats, _nonfinite_count(pred).reshape(1)]).tolist()
            if stats[4]:
                _raise_nonfinite(_CLASSIFICATION, "y_pred", pred, stats[4])
        else:
            pred_ids, pred_stats = _id_stats(pred)
            stats = torch.cat([true_stats, pred_stats]).tolist()  # the one host sync
            _raise_bad_ids("y_pred", pred, pred_ids, stats[4:], k)
        _raise_bad_ids("y_true", true, true_ids, stats[:4], k)
        if k is None:
            k = max(stats[3], stats[7]) + 1
        return pred_ids, true_ids, k

    def update(self, y_pred: Tensor, y_true: Tensor) -> None:
        """Add a batch of predictions and true class ids.

        Args:
            y_pred: ``[B, K]`` scores, logits or log-probabilities (argmax), or ``[B]`` ids.
            y_true: ``[B]`` true class ids (integer, or floating with integral values).

        Raises:
            ValueError: for different sample counts, ids outside ``[0, K)``, non-integral or
                non-finite ids, non-finite scores, or ``[B, K]`` with K != ``num_classes``.
            TypeError: if an input is not a tensor.
        """
        pred_ids, true_ids, k = self._class_ids(y_pred, y_true)
        cm = self._grown(k, true_ids.device)
        size = cm.shape[0]
        if true_ids.numel():
            flat = torch.bincount(true_ids * size + pred_ids, minlength=size * size)
            cm = cm + flat.reshape(size, size)
        self._cm = cm

    def merge(self, other: StreamingClassificationMetrics) -> Self:
        """Add ``other``'s confusion matrix to this one (in place), padding to the larger K.

        Returns:
            ``self``, so merges chain.

        Raises:
            TypeError: if ``other`` is not a :class:`StreamingClassificationMetrics`.
            ValueError: if both fix ``num_classes`` differently, or ``other`` has seen more
                classes than this state's ``num_classes``.
        """
        _other_state(self, other)
        mine, theirs = self.num_classes, other.num_classes
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(
                f"cannot merge classification states with num_classes={mine} and {theirs}"
            )
        size = max(self._cm.shape[0], other._cm.shape[0])
        if mine is not None and size > mine:
            raise ValueError(
                f"cannot merge a state that has seen {size} classes into one with "
                f"num_classes={mine}"
            )
        cm = self._grown(size, self._cm.device)
        self._cm = cm + F.pad(other._cm.to(cm.device), (0, size - other._cm.shape[0]) * 2)
        return self

    def sync_distributed(self, group: dist.ProcessGroup | None = None) -> None:
        """Replace this rank's confusion matrix by the sum over ranks (a collective).

        Ranks that saw different classes (or none) first agree on one size K (all_reduce MAX,
        together with the ranks' ``num_classes``), pad their matrices to ``[K, K]`` and sum them
        (all_reduce SUM, exact in int64). No-op without an initialized process group.

        Args:
            group: the process group (default: the default group).

        Raises:
            ValueError: on every rank, if ranks fixed different ``num_classes``, or a rank
                that infers K saw more classes than another rank's ``num_classes``.
        """
        if not is_distributed():
            return
        device = self._cm.device
        comm = communication_device(group)
        fixed = self.num_classes
        # MAX of (size, num_classes, -num_classes): the largest matrix and the largest and
        # smallest fixed num_classes (ranks that infer K send values that never win).
        agree = torch.tensor(
            [self._cm.shape[0], fixed or 0, -(fixed or _NO_LIMIT)], dtype=_I64, device=comm
        )
        dist.all_reduce(agree, op=dist.ReduceOp.MAX, group=group)
        size, largest, negated = (int(v) for v in agree.tolist())
        smallest = -negated
        if largest and smallest != largest:
            raise ValueError(
                f"sync_distributed: ranks fixed different num_classes (from {smallest} to "
                f"{largest}); build every rank's StreamingClassificationMetrics alike"
            )
        if largest and size > largest:
            raise ValueError(
                f"sync_distributed: a rank saw {size} classes but num_classes={largest} on "
                "another rank; pass the same num_classes on every rank"
            )
        cm = self._grown(size, comm).clone()
        dist.all_reduce(cm, op=dist.ReduceOp.SUM, group=group)
        self._cm = cm.to(device)

    def compute(self) -> dict[str, Any]:
        """Accuracy, weighted precision/recall/F1 (zero_division 0) and the confusion matrix.

        Returns:
            Python floats for ``accuracy``, ``precision``, ``recall``, ``f1`` and an int64
            ``[K, K]`` cpu tensor ``confusion_matrix`` (rows true, columns predicted, a copy).
        """
        cm = self._cm.to(_CPU, copy=True)
        counts = cm.to(_F64)
        n = float(counts.sum())
        if n == 0.0:
            zero = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
            return {**zero, "confusion_matrix": cm}
        tp = counts.diagonal()
        support = counts.sum(dim=1)
        predicted = counts.sum(dim=0)

        def ratio(num: Tensor, den: Tensor) -> Tensor:
            # zero_division=0: a class never predicted (or never true) scores 0, not 0/0. The
            # counts are integers and num <= den (tp <= support, predicted), so num is 0
            # wherever den is: clamping den to 1 gives that 0 and leaves every other den alone.
            return num / den.clamp(min=1.0)

        def weighted(per_class: Tensor) -> float:
            return float((per_class * support).sum()) / n

        return {
            "accuracy": float(tp.sum()) / n,
            "precision": weighted(ratio(tp, predicted)),
            "recall": weighted(ratio(tp, support)),
            "f1": weighted(ratio(2.0 * tp, support + predicted)),
            "confusion_matrix": cm,
        }


def compute_classification_metrics(
    y_pred: Tensor, y_true: Tensor, num_classes: int | None = None
) -> dict[str, Any]:
    """Classification metrics (a :class:`StreamingClassificationMetrics` fed once).

    Args:
        y_pred: ``[B, K]`` scores/log-probabilities (argmax) or ``[B]`` class ids.
        y_true: ``[B]`` true class ids.
        num_classes: K; ``None`` takes the width of ``[B, K]`` predictions, else the largest
            id + 1.

    Returns:
        ``{"accuracy", "precision", "recall", "f1"}`` (weighted by support, zero_division 0,
        as scikit-learn defines them) as Python floats, and ``confusion_matrix``, an int64
        ``[K, K]`` cpu tensor (rows true, columns predicted). No data gives 0.0.

    Raises:
        ValueError: for different lengths, ids outside ``[0, K)``, non-integral or non-finite
            ids or scores, ``[B, K]`` with K != ``num_classes``, or a bad ``num_classes``.
        TypeError: if an input is not a tensor.
    """
    state = StreamingClassificationMetrics(num_classes)
    state.update(y_pred, y_true)
    return state.compute()


# --------------------------------------------------------------------------- count

_COUNT = "count metrics"


def _count_inputs(
    count_pred: object, count_true: object, mask: object
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated ``(pred, true, valid)``: ``[B, A]`` float64 values and the bool valid mask."""
    pred = _tensor(_COUNT, "count_pred", count_pred)
    true = _tensor(_COUNT, "count_true", count_true)
    mask_t = _tensor(_COUNT, "mask", mask)
    _same_device(_COUNT, {"count_pred": pred, "count_true": true, "mask": mask_t})
    if pred.dim() != 3 or pred.shape[-1] != 1:
        raise ValueError(f"{_COUNT}: count_pred must be [B, A, 1], got shape {_shape(pred)}")
    if true.shape != pred.shape:
        raise ValueError(
            f"{_COUNT}: count_true shape {_shape(true)} does not match count_pred "
            f"{_shape(pred)}; shapes must be equal (no broadcasting, no slicing)"
        )
    if mask_t.shape != pred.shape[:2]:
        raise ValueError(
            f"{_COUNT}: mask shape {_shape(mask_t)} does not match count_pred {_shape(pred)}; "
            f"expected {_shape(pred)[:2]}"
        )
    valid = mask_t != 0
    pred, true = pred[..., 0], true[..., 0]
    if valid.numel():
        counts = torch.stack(
            [
                _nonfinite_count(mask_t),
                _nonfinite_count(pred, valid),
                _nonfinite_count(true, valid),
            ]
        ).tolist()  # the one host sync
        if counts[0]:
            _raise_nonfinite(_COUNT, "mask", mask_t, counts[0])
        for name, t, count in (("count_pred", pred, counts[1]), ("count_true", true, counts[2])):
            if count:
                _raise_nonfinite(_COUNT, name, t.unsqueeze(-1), count, valid.unsqueeze(-1))
    return pred.to(_F64), true.to(_F64), valid


class StreamingCountMetrics:
    """Streaming masked MAE and MSE of ``[B, A, 1]`` counts over valid (``mask != 0``) ASVs.

    State: an int64 count of valid positions and float64 sums of ``|d|`` and ``d²``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all data."""
        self._n = torch.zeros((), dtype=_I64)
        self._abs = torch.zeros((), dtype=_F64)
        self._sq = torch.zeros((), dtype=_F64)

    def update(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> None:
        """Add a batch; padded positions may hold anything (NaN/±inf included).

        Args:
            count_pred: ``[B, A, 1]`` predicted counts.
            count_true: ``[B, A, 1]`` true counts.
            mask: ``[B, A]`` bool, integer or floating; a position is valid where ``!= 0``.

        Raises:
            ValueError: if the shapes do not fit together, the inputs are on different devices,
                or a valid position holds NaN/±inf.
            TypeError: if an input is not a tensor.
        """
        pred, true, valid = _count_inputs(count_pred, count_true, mask)
        # Selection before arithmetic: padded garbage (inf - inf) is never computed with.
        diff = torch.where(valid, pred, 0.0) - torch.where(valid, true, 0.0)
        device = diff.device
        self._n = self._n.to(device) + valid.sum(dtype=_I64)
        self._abs = self._abs.to(device) + diff.abs().sum()
        self._sq = self._sq.to(device) + (diff * diff).sum()

    def merge(self, other: StreamingCountMetrics) -> Self:
        """Add ``other``'s counts and sums to this state (in place); ``other`` is unchanged.

        Returns:
            ``self``, so merges chain.

        Raises:
            TypeError: if ``other`` is not a :class:`StreamingCountMetrics`.
        """
        _other_state(self, other)
        device = self._n.device
        self._n = self._n + other._n.to(device)
        self._abs = self._abs + other._abs.to(device)
        self._sq = self._sq + other._sq.to(device)
        return self

    def sync_distributed(self, group: dist.ProcessGroup | None = None) -> None:
        """Replace this rank's count and sums by their totals over ranks (a collective).

        The int64 counts and float64 sums are all_gathered and added in rank order, so every
        rank ends with the identical state. No-op without an initialized process group.

        Args:
            group: the process group (default: the default group).
        """
        if not is_distributed():
            return
        device = self._n.device
        counts = all_gather_stacked(self._n.reshape(1), group=group)
        sums = all_gather_stacked(torch.stack([self._abs, self._sq]), group=group)
        self._n = counts.sum().to(device)
        self._abs, self._sq = sums.sum(dim=0).to(device).unbind()

    def compute(self) -> dict[str, float]:
        """``{"mae", "mse"}`` over every valid position fed; none valid gives 0.0."""
        n = int(self._n)
        if n == 0:
            return {"mae": 0.0, "mse": 0.0}
        abs_sum, sq_sum = torch.stack([self._abs, self._sq]).tolist()
        return {"mae": abs_sum / n, "mse": sq_sum / n}


def compute_count_metrics(count_pred: Tensor, count_true: Tensor, mask: Tensor) -> dict[str, float]:
    """Masked MAE and MSE over valid ASVs (a :class:`StreamingCountMetrics` fed once).

    Args:
        count_pred: ``[B, A, 1]`` predicted counts.
        count_true: ``[B, A, 1]`` true counts.
        mask: ``[B, A]`` bool/int/float; valid where ``!= 0``. Padded positions are ignored
            whatever they hold.

    Returns:
        ``{"mae", "mse"}`` as Python floats; no valid entries give 0.0.

    Raises:
        ValueError: if the shapes do not fit together or a valid position holds NaN/±inf.
        TypeError: if an input is not a tensor.
    """
    state = StreamingCountMetrics()
    state.update(count_pred, count_true, mask)
    return state.compute()
