"""Hypothesis strategies for metric inputs: regression, classification, count data, partitions.

Every strategy draws sizes first and values second, so a failing example shrinks to a small,
readable one. Tensors are built on the cpu; checks move them with ``.to(device)``. Each drawn
case is a small dataclass with ``describe()`` (one readable line), ``to_plain()`` /
``from_plain()`` (plain data for a weights-only repro file) and ``to(device)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustness.errors import HarnessUsageError

__all__ = [
    "METRIC_DTYPES",
    "REGRESSION_KINDS",
    "ClassificationData",
    "CountData",
    "Partition",
    "RegressionData",
    "classification_data",
    "count_data",
    "partitioned",
    "partitions",
    "regression_data",
]

#: Floating dtypes metric inputs are drawn in.
METRIC_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

#: Kinds of regression data, in the order Hypothesis shrinks towards.
REGRESSION_KINDS = ("ordinary", "constant", "single", "empty", "offset")

#: Magnitude bound of "ordinary" values: squares and sums of a few dozen stay finite in float16
#: arithmetic widened to float32, so only the metric's own precision is under test.
_ORDINARY = 1e3

#: Values smaller in magnitude are drawn as 0: squared differences of ordinary values then stay
#: normal in float64 (tiny and subnormal inputs are the loss rules' "extremes", not metric data).
_FLUSH = 1e-6

#: The large common offset of C-STREAM-3 and the noise scales around it.
_OFFSET = 1e8
_OFFSET_NOISE_SCALES = (1.0, 1e3)

_NUMPY_WIDTH = {torch.float64: 64, torch.float32: 32, torch.float16: 16, torch.bfloat16: 32}
_NUMPY_DTYPE = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: np.float32,
}
_MASK_DTYPES = (torch.bool, torch.int64, torch.float32)


# --------------------------------------------------------------------------- helpers


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _bfloat16_exact(values: np.ndarray) -> np.ndarray:
    """Zero the low 16 bits of float32 values, so the bfloat16 cast below is exact."""
    as32 = np.ascontiguousarray(values, dtype=np.float32)
    return (as32.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def _tensor(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Build a ``dtype`` tensor from float64 values (bfloat16 truncated to exact values)."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(_bfloat16_exact(values)).to(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=_NUMPY_DTYPE[dtype])).clone()


def _floats(dtype: torch.dtype, low: float, high: float) -> st.SearchStrategy[float]:
    """Finite floats in ``[low, high]`` that the dtype (or its float32 carrier) can hold."""
    return st.floats(low, high, width=_NUMPY_WIDTH[dtype], allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]


def _flush(value: float) -> float:
    return 0.0 if abs(value) < _FLUSH else value


def _values(dtype: torch.dtype, n: int, low: float, high: float) -> st.SearchStrategy[np.ndarray]:
    """``n`` values of ``_floats``, magnitudes below ``_FLUSH`` flushed to 0."""
    return hnp.arrays(np.float64, (n,), elements=_floats(dtype, low, high).map(_flush))


def _shapes_of(n: int) -> list[tuple[int, ...]]:
    """Shapes with ``n`` elements, flat first (Hypothesis shrinks towards it)."""
    shapes: list[tuple[int, ...]] = [(n,), (n, 1), (1, n)]
    for a in range(2, n):
        if n % a == 0:
            shapes.append((a, n // a))
            b = n // a
            if b % 2 == 0 and b > 2:
                shapes.append((a, 2, b // 2))
    if n == 0:
        shapes += [(0, 3), (2, 0)]
    return list(dict.fromkeys(shapes))


@st.composite
def _shaped(draw: st.DrawFn, flat: torch.Tensor, allow_noncontiguous: bool) -> torch.Tensor:
    """Reshape a flat tensor to a drawn shape, sometimes as a non-contiguous (transposed) view."""
    shape = draw(st.sampled_from(_shapes_of(flat.numel())))
    out = flat.reshape(shape)
    if allow_noncontiguous and out.dim() == 2 and min(out.shape) > 1 and draw(st.booleans()):
        out = out.t().contiguous().t()
    return out


def _resolve_dtypes(dtype: torch.dtype | Sequence[torch.dtype] | None) -> tuple[torch.dtype, ...]:
    if dtype is None:
        return METRIC_DTYPES
    chosen = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
    bad = [d for d in chosen if d not in METRIC_DTYPES]
    if bad or not chosen:
        raise HarnessUsageError(
            f"dtype must be one of {', '.join(map(_dtype_name, METRIC_DTYPES))}, "
            f"got {bad or chosen}"
        )
    return chosen


def _check_sizes(name: str, low: int, high: int) -> None:
    if low < 0 or high < low:
        raise HarnessUsageError(
            f"need 0 <= min_{name} <= max_{name}, got min_{name}={low}, max_{name}={high}"
        )


def _summary(t: torch.Tensor, limit: int = 12) -> str:
    """Shape, dtype and (for small tensors) the values, as one line."""
    head = f"{tuple(t.shape)} {_dtype_name(t.dtype)}"
    if t.numel() == 0:
        return head + " (empty)"
    if t.numel() <= limit:
        values = t.detach().cpu()
        values = values.double() if values.is_floating_point() else values
        return head + f" = {values.reshape(-1).tolist()}"
    flat = t.detach().cpu().double().reshape(-1)
    return head + f" in [{flat.min().item():.6g}, {flat.max().item():.6g}]"


# --------------------------------------------------------------------------- regression


@dataclass(frozen=True)
class RegressionData:
    """Predictions and targets with the same number of elements (any shapes)."""

    y_pred: torch.Tensor
    y_true: torch.Tensor
    kind: str = "ordinary"

    @property
    def n_rows(self) -> int:
        """Number of elements (the unit streaming partitions split)."""
        return int(self.y_true.numel())

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the inputs."""
        return self.y_true.dtype

    def args(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positional arguments of ``compute_regression_metrics`` / ``update``."""
        return (self.y_pred, self.y_true)

    def rows(self, start: int, stop: int) -> RegressionData:
        """Elements ``start:stop`` of the flattened data."""
        return RegressionData(
            self.y_pred.reshape(-1)[start:stop], self.y_true.reshape(-1)[start:stop], self.kind
        )

    def to(self, device: str | torch.device) -> RegressionData:
        """Copy on ``device``."""
        return RegressionData(self.y_pred.to(device), self.y_true.to(device), self.kind)

    def describe(self) -> str:
        """One readable line: kind, shapes, dtype, values."""
        pred, true = _summary(self.y_pred), _summary(self.y_true)
        return f"regression {self.kind}: y_pred {pred}; y_true {true}"

    __repr__ = describe

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a repro file."""
        return {"y_pred": self.y_pred, "y_true": self.y_true, "kind": self.kind}

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> RegressionData:
        """Inverse of :meth:`to_plain`."""
        return cls(data["y_pred"], data["y_true"], str(data["kind"]))


def _kinds(kind: str | Sequence[str] | None, allowed: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(allowed) if kind is None else (kind,) if isinstance(kind, str) else tuple(kind)
    bad = [k for k in chosen if k not in allowed]
    if bad or not chosen:
        raise HarnessUsageError(f"kind must be among {', '.join(allowed)}, got {chosen!r}")
    return chosen


@st.composite
def _regression(
    draw: st.DrawFn,
    kinds: tuple[str, ...],
    dtypes: tuple[torch.dtype, ...],
    min_size: int,
    max_size: int,
    allow_noncontiguous: bool,
) -> RegressionData:
    kind = draw(st.sampled_from(kinds))
    dtype = torch.float64 if kind == "offset" else draw(st.sampled_from(dtypes))
    if kind == "single":
        n = 1
    elif kind == "empty":
        n = 0
    else:
        n = draw(st.integers(max(min_size, 1 if kind == "constant" else 0), max_size))
    relation = draw(st.sampled_from(("independent", "close", "perfect")))

    if kind == "offset":
        scale = draw(st.sampled_from(_OFFSET_NOISE_SCALES))
        spread = draw(_values(dtype, n, -1.0, 1.0))
        if n >= 2:
            # Pin one -1 and one +1 so the targets' spread (and condition number, about
            # 1e8 / scale) is known: a nearly constant 1e8 column is beyond any float64 method.
            low = draw(st.integers(0, n - 1))
            high = (low + 1 + draw(st.integers(0, n - 2))) % n
            spread[low], spread[high] = -1.0, 1.0
        true = _OFFSET + spread * scale
        noise = draw(_values(dtype, n, -1.0, 1.0))
    elif kind == "constant":
        value = draw(_floats(dtype, -_ORDINARY, _ORDINARY) | st.sampled_from((0.1, 1.0 / 3.0)))
        true = np.full(n, value)
        noise = draw(_values(dtype, n, -1.0, 1.0))
    else:
        true = draw(_values(dtype, n, -_ORDINARY, _ORDINARY))
        noise = draw(_values(dtype, n, -1.0, 1.0))
    y_true = _tensor(true, dtype)
    true_held = y_true.double().numpy()
    if relation == "perfect":
        pred = true_held
    elif relation == "close":
        spread_held = float(np.std(true_held)) if n else 0.0
        pred = true_held + noise * max(spread_held, 1e-3) * 0.1
    elif kind == "offset":
        pred = _OFFSET + noise * scale
    else:
        pred = draw(_values(dtype, n, -_ORDINARY, _ORDINARY))
    y_pred = _tensor(pred, dtype)
    return RegressionData(
        draw(_shaped(y_pred, allow_noncontiguous)), draw(_shaped(y_true, allow_noncontiguous)), kind
    )


def regression_data(
    *,
    kind: str | Sequence[str] | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    min_size: int = 0,
    max_size: int = 48,
    allow_noncontiguous: bool = True,
) -> st.SearchStrategy[RegressionData]:
    """Regression predictions/targets with equal element counts but independent shapes.

    Kinds: ``ordinary`` (values in ±1e3), ``constant`` targets (perfect or not), ``single``
    sample, ``empty``, ``offset`` (float64 ``1e8 + noise``, for C-STREAM-3). Predictions are
    independent of, close to, or equal to the targets. bfloat16 values are float32 draws with
    the low 16 bits zero, so they are exact.

    Raises:
        HarnessUsageError: for an unknown kind or dtype, ``kind="offset"`` without float64, or
            ``max_size < min_size``.
    """
    dtypes = _resolve_dtypes(dtype)
    kinds = _kinds(kind, REGRESSION_KINDS)
    if torch.float64 not in dtypes:
        # The 1e8 offset needs float64 (its noise is below float32's resolution there).
        if kind is not None and "offset" in kinds:
            raise HarnessUsageError(
                f"kind='offset' is float64 only, but dtype={dtype} excludes float64"
            )
        kinds = tuple(k for k in kinds if k != "offset")
    _check_sizes("size", min_size, max_size)
    return _regression(kinds, dtypes, min_size, max_size, allow_noncontiguous)


# --------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class ClassificationData:
    """Class predictions (``[B, K]`` log-probs or ``[B]`` ids) and true ids ``[B]``."""

    y_pred: torch.Tensor
    y_true: torch.Tensor
    num_classes: int | None = None

    @property
    def n_rows(self) -> int:
        """Number of samples B."""
        return int(self.y_true.shape[0])

    @property
    def pred_form(self) -> str:
        """``"log_probs"`` for ``[B, K]`` predictions, ``"ids"`` for ``[B]``."""
        return "log_probs" if self.y_pred.dim() == 2 else "ids"

    @property
    def pred_ids(self) -> torch.Tensor:
        """Predicted class ids ``[B]`` (argmax of log-probs; every row has a unique max)."""
        if self.pred_form == "ids":
            return self.y_pred
        return self.y_pred.double().argmax(dim=1)

    @property
    def k(self) -> int:
        """Number of classes the metric should use (given, the width of ``[B, K]``, or inferred)."""
        if self.num_classes is not None:
            return self.num_classes
        if self.pred_form == "log_probs":
            return int(self.y_pred.shape[1])
        ids = torch.cat([self.y_true.reshape(-1).long(), self.y_pred.reshape(-1).long()])
        return int(ids.max()) + 1 if ids.numel() else 0

    def args(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positional arguments of ``compute_classification_metrics`` / ``update``."""
        return (self.y_pred, self.y_true)

    def rows(self, start: int, stop: int) -> ClassificationData:
        """Samples ``start:stop``."""
        return ClassificationData(
            self.y_pred[start:stop], self.y_true[start:stop], self.num_classes
        )

    def with_ids(self) -> ClassificationData:
        """The same predictions given as ``[B]`` ids (num_classes made explicit)."""
        return ClassificationData(self.pred_ids.clone(), self.y_true, self.k)

    def to(self, device: str | torch.device) -> ClassificationData:
        """Copy on ``device``."""
        return ClassificationData(self.y_pred.to(device), self.y_true.to(device), self.num_classes)

    def describe(self) -> str:
        """One readable line: form, num_classes, ids, predictions."""
        present = sorted(set(self.y_true.tolist()))
        return (
            f"classification {self.pred_form}, num_classes={self.num_classes} (K={self.k}), "
            f"B={self.n_rows}, classes present in y_true {present}: "
            f"y_pred {_summary(self.y_pred, 24)}; y_true {_summary(self.y_true, 24)}"
        )

    __repr__ = describe

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a repro file."""
        return {"y_pred": self.y_pred, "y_true": self.y_true, "num_classes": self.num_classes}

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> ClassificationData:
        """Inverse of :meth:`to_plain`."""
        num_classes = data["num_classes"]
        return cls(
            data["y_pred"], data["y_true"], None if num_classes is None else int(num_classes)
        )


@st.composite
def _classification(
    draw: st.DrawFn,
    dtypes: tuple[torch.dtype, ...],
    forms: tuple[str, ...],
    given: tuple[bool, ...],
    min_batch: int,
    max_batch: int,
    max_classes: int,
) -> ClassificationData:
    b = draw(st.integers(min_batch, max_batch))
    k = draw(st.integers(1, max_classes))
    form = draw(st.sampled_from(forms))
    give = draw(st.sampled_from(given))
    dtype = draw(st.sampled_from(dtypes))
    # A subset of present classes makes imbalance and absent classes common, not rare.
    present = sorted(draw(st.sets(st.integers(0, k - 1), min_size=1, max_size=k)))
    true = draw(st.lists(st.sampled_from(present), min_size=b, max_size=b))
    guess = draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b))
    copy_true = draw(st.lists(st.booleans(), min_size=b, max_size=b))
    pred_ids = [t if c else g for t, c, g in zip(true, copy_true, guess, strict=True)]
    y_true = torch.tensor(true, dtype=torch.int64)
    if form == "ids":
        y_pred = torch.tensor(pred_ids, dtype=torch.int64)
    else:
        scores = draw(_values(torch.float64, b * k, -10.0, 10.0)).reshape(b, k)
        margins = draw(_values(torch.float64, b, 1.0, 5.0))
        rows = np.arange(b)
        cols = np.asarray(pred_ids, dtype=np.int64)
        # A margin >= 1 keeps the predicted class the unique maximum after rounding to any dtype.
        scores[rows, cols] = scores.max(axis=1, initial=-np.inf) + margins
        log_probs = torch.log_softmax(torch.from_numpy(scores), dim=1).numpy()
        y_pred = _tensor(log_probs.reshape(-1), dtype).reshape(b, k)
    return ClassificationData(y_pred, y_true, k if give else None)


def classification_data(
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    pred_form: str | None = None,
    num_classes_given: bool | None = None,
    min_batch: int = 0,
    max_batch: int = 32,
    max_classes: int = 6,
) -> st.SearchStrategy[ClassificationData]:
    """Classification data with imbalanced labels and absent classes.

    ``pred_form`` is ``"log_probs"`` (``[B, K]``, the drawn class is the unique row maximum),
    ``"ids"`` (``[B]`` int64) or ``None`` for either; ``num_classes_given`` chooses whether the
    case passes ``num_classes`` (``None``: either). Labels come from a drawn subset of classes.

    Raises:
        HarnessUsageError: for an unknown form or dtype, or bad size bounds.
    """
    forms = ("log_probs", "ids") if pred_form is None else (pred_form,)
    if any(f not in ("log_probs", "ids") for f in forms):
        raise HarnessUsageError(f"pred_form must be 'log_probs', 'ids' or None, got {pred_form!r}")
    given = (True, False) if num_classes_given is None else (bool(num_classes_given),)
    _check_sizes("batch", min_batch, max_batch)
    if max_classes < 1:
        raise HarnessUsageError(f"max_classes must be >= 1, got {max_classes}")
    return _classification(_resolve_dtypes(dtype), forms, given, min_batch, max_batch, max_classes)


# --------------------------------------------------------------------------- count


@dataclass(frozen=True)
class CountData:
    """Masked count predictions/targets ``[B, A, 1]`` with a ``[B, A]`` mask (valid: != 0)."""

    count_pred: torch.Tensor
    count_true: torch.Tensor
    mask: torch.Tensor

    @property
    def n_rows(self) -> int:
        """Number of samples B."""
        return int(self.count_true.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the counts."""
        return self.count_true.dtype

    @property
    def valid(self) -> torch.Tensor:
        """Bool ``[B, A]``, True at valid positions."""
        return self.mask != 0

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positional arguments of ``compute_count_metrics`` / ``update``."""
        return (self.count_pred, self.count_true, self.mask)

    def rows(self, start: int, stop: int) -> CountData:
        """Samples ``start:stop``."""
        return CountData(
            self.count_pred[start:stop], self.count_true[start:stop], self.mask[start:stop]
        )

    def to(self, device: str | torch.device) -> CountData:
        """Copy on ``device``."""
        return CountData(
            self.count_pred.to(device), self.count_true.to(device), self.mask.to(device)
        )

    def describe(self) -> str:
        """One readable line: shapes, dtypes, valid count, garbage at padding."""
        valid = self.valid.cpu()
        pred = self.count_pred.detach().cpu().double()[..., 0]
        # Counted only when the shapes fit: C-METRIC-INPUT-1 describes mismatched inputs too.
        bad = int((~torch.isfinite(pred[~valid])).sum()) if pred.shape == valid.shape else 0
        return (
            f"count {_dtype_name(self.dtype)}: pred/true {tuple(self.count_true.shape)}, mask "
            f"{tuple(self.mask.shape)} {_dtype_name(self.mask.dtype)}, "
            f"{int(valid.sum())} valid / {valid.numel()}, {bad} non-finite at padding; "
            f"mask {self.mask.cpu().int().tolist()}"
        )

    __repr__ = describe

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a repro file."""
        return {"count_pred": self.count_pred, "count_true": self.count_true, "mask": self.mask}

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> CountData:
        """Inverse of :meth:`to_plain`."""
        return cls(data["count_pred"], data["count_true"], data["mask"])


def _garbage_values(dtype: torch.dtype) -> tuple[float, ...]:
    big = float(torch.finfo(dtype).max)
    return (math.nan, math.inf, -math.inf, big, -big)


@st.composite
def _count(
    draw: st.DrawFn,
    dtypes: tuple[torch.dtype, ...],
    mask_dtypes: tuple[torch.dtype, ...],
    min_batch: int,
    max_batch: int,
    max_asvs: int,
    garbage: bool,
) -> CountData:
    b = draw(st.integers(min_batch, max_batch))
    a = draw(st.integers(0, max_asvs))
    dtype = draw(st.sampled_from(dtypes))
    mask_dtype = draw(st.sampled_from(mask_dtypes))
    layout = draw(st.sampled_from(("ragged", "interleaved", "all_valid", "all_padding")))
    if layout == "ragged":
        lengths = draw(st.lists(st.integers(0, a), min_size=b, max_size=b))
        valid = np.arange(a)[None, :] < np.asarray(lengths, dtype=np.int64).reshape(b, 1)
    elif layout == "interleaved":
        valid = np.asarray(draw(st.lists(st.booleans(), min_size=b * a, max_size=b * a)), bool)
        valid = valid.reshape(b, a)
    else:
        valid = np.full((b, a), layout == "all_valid")
    true = draw(_values(dtype, b * a, 0.0, _ORDINARY)).reshape(b, a)
    pred = draw(_values(dtype, b * a, -_ORDINARY, _ORDINARY)).reshape(b, a)
    if garbage and (~valid).any():
        fills = _garbage_values(dtype)
        n_pad = int((~valid).sum())
        picks = draw(st.lists(st.sampled_from(fills), min_size=n_pad, max_size=n_pad))
        pred[~valid] = picks
        true[~valid] = picks[::-1]
    count_pred = _tensor(pred.reshape(-1), dtype).reshape(b, a, 1)
    count_true = _tensor(true.reshape(-1), dtype).reshape(b, a, 1)
    mask = torch.from_numpy(valid.copy()).to(mask_dtype)
    return CountData(count_pred, count_true, mask)


def count_data(
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    mask_dtype: torch.dtype | None = None,
    min_batch: int = 1,
    max_batch: int = 6,
    max_asvs: int = 8,
    garbage: bool = True,
) -> st.SearchStrategy[CountData]:
    """Masked count data: ragged, interleaved, all-valid or all-padding masks (bool/int/float).

    With ``garbage`` the padded positions of both tensors hold NaN, ±inf or ±finfo.max.

    Raises:
        HarnessUsageError: for an unknown dtype or mask dtype, or bad size bounds.
    """
    _check_sizes("batch", min_batch, max_batch)
    if max_asvs < 0:
        raise HarnessUsageError(f"max_asvs must be >= 0, got {max_asvs}")
    if mask_dtype is not None and mask_dtype not in _MASK_DTYPES:
        raise HarnessUsageError(
            f"mask_dtype must be one of {', '.join(map(_dtype_name, _MASK_DTYPES))} or None, "
            f"got {mask_dtype}"
        )
    mask_dtypes = _MASK_DTYPES if mask_dtype is None else (mask_dtype,)
    return _count(_resolve_dtypes(dtype), mask_dtypes, min_batch, max_batch, max_asvs, garbage)


# --------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Partition:
    """Sizes of consecutive streaming batches (zeros are empty batches)."""

    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        """Number of items the partition covers."""
        return sum(self.sizes)

    def bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each batch, in order."""
        out, start = [], 0
        for size in self.sizes:
            out.append((start, start + size))
            start += size
        return out

    def describe(self) -> str:
        """One readable line."""
        return f"{len(self.sizes)} batch(es) of sizes {list(self.sizes)}"

    __repr__ = describe

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a repro file."""
        return {"sizes": list(self.sizes)}

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> Partition:
        """Inverse of :meth:`to_plain`."""
        return cls(tuple(int(s) for s in data["sizes"]))


def partitions(
    n: int, *, min_batches: int = 1, max_batches: int = 8, allow_empty: bool = True
) -> st.SearchStrategy[Partition]:
    """Ragged partitions of ``n`` items into consecutive batches (shrinks to ``min_batches``).

    Raises:
        HarnessUsageError: if ``n < 0``, or the batch bounds are out of order or cannot be met
            without empty batches.
    """
    if n < 0 or not 1 <= min_batches <= max_batches:
        raise HarnessUsageError(
            f"need n >= 0 and 1 <= min_batches <= max_batches, got n={n}, "
            f"{min_batches=}, {max_batches=}"
        )
    if not allow_empty and n < min_batches:
        raise HarnessUsageError(f"cannot split n={n} into {min_batches} non-empty batches")

    def build(cuts: list[int]) -> Partition:
        edges = [0, *sorted(cuts), n]
        return Partition(tuple(b - a for a, b in itertools.pairwise(edges)))

    if allow_empty:
        cuts = st.lists(st.integers(0, n), min_size=min_batches - 1, max_size=max_batches - 1)
    else:
        inner = max(n - 1, 0)
        cuts = st.lists(
            st.integers(1, max(inner, 1)),
            unique=True,
            min_size=min(min_batches - 1, inner),
            max_size=min(max_batches - 1, inner),
        )
    return cuts.map(build)


def partitioned(
    data: st.SearchStrategy[Any], *, min_batches: int = 1, max_batches: int = 8
) -> st.SearchStrategy[tuple[Any, Partition]]:
    """Pairs ``(case, partition of case.n_rows)`` for streaming checks."""
    return data.flatmap(
        lambda case: st.tuples(
            st.just(case),
            partitions(case.n_rows, min_batches=min_batches, max_batches=max_batches),
        )
    )
