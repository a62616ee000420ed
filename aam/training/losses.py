"""AAM's multi-task loss: target, count, base (UniFrac / Faith PD) and nucleotide terms.

Every term is robust to ragged, padded batches (see the contract, ``CONTRACT.md``):

* masking is by *selection* (:func:`torch.where` before any arithmetic), so whatever a padded
  position holds (NaN, ±inf, ``finfo.max``, out-of-range ids) reaches neither a value nor a
  gradient;
* a term with no valid positions is exactly 0 and still a function of its prediction;
* shapes must match exactly (never sliced, never broadcast);
* non-finite values at valid positions raise :class:`NonFiniteOutputError` before a loss is
  returned (so no step can be taken on it); with the id-range checks this is the only host
  sync: one per ``compute_*`` call, and one for all terms together in ``forward``;
* half inputs are computed and returned in float32; sums are pre-scaled so a representable
  mean never overflows in an intermediate.

Example:
    >>> import torch
    >>> loss_fn = MultiTaskLoss(penalty=1.0, nuc_penalty=1.0)
    >>> outputs = {"count_prediction": torch.zeros(2, 3, 1, requires_grad=True)}
    >>> targets = {"counts": torch.ones(2, 3, 1), "mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    >>> losses = loss_fn(outputs, targets)
    >>> losses["count_loss"].item(), losses["total_loss"].item()
    (1.0, 1.0)
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ENCODER_TYPES",
    "HUBER_DELTA",
    "TARGET_LOSS_TYPES",
    "MultiTaskLoss",
    "NonFiniteOutputError",
    "compute_pairwise_distances",
]

#: Regression losses ``target_loss_type`` accepts.
TARGET_LOSS_TYPES = ("mse", "mae", "huber")
#: ``encoder_type`` values: pairwise UniFrac ``[B, B]`` or per-sample Faith PD ``[B, 1]``.
ENCODER_TYPES = ("unifrac", "faith_pd")
#: Threshold between the quadratic and the linear part of the Huber loss (torch's default).
HUBER_DELTA = 1.0

_HALF_DTYPES = (torch.float16, torch.bfloat16)

# The kernel F.mse_loss ends in, and the reduction code it passes for "mean". Callers check
# the shapes equal first, so the wrapper's broadcast and size warning add nothing but their
# cost: about 8 us a call, a third of the regression term's forward at B = 16. The public
# function should a torch release move either.
_MSE_KERNEL: Callable[[Tensor, Tensor, int], Tensor] | None
_MSE_KERNEL = getattr(torch._C._nn, "mse_loss", None)
try:
    _MEAN_REDUCTION: int = torch.nn._reduction.get_enum("mean")
except (AttributeError, ValueError):  # pragma: no cover - a torch without the private helper
    _MSE_KERNEL = None


def _mse_loss(pred: Tensor, true: Tensor) -> Tensor:
    """``F.mse_loss(pred, true)`` for tensors of the same shape."""
    if _MSE_KERNEL is None:  # pragma: no cover
        return F.mse_loss(pred, true)
    return _MSE_KERNEL(pred, true, _MEAN_REDUCTION)


class NonFiniteOutputError(ValueError):
    """A prediction or truth holds NaN/±inf at a valid (non-padded) position.

    Attributes:
        term: the loss term, e.g. ``"count_loss"``.
        key: the tensor, e.g. ``"count_prediction"``.
        count: how many valid entries are non-finite.
        valid: how many valid entries the tensor has.
        index: the first bad index (a tuple).
        value: the value found there (``nan``, ``inf`` or ``-inf``).
    """

    def __init__(
        self,
        term: str,
        key: str,
        *,
        count: int,
        valid: int,
        index: tuple[int, ...],
        value: float,
    ) -> None:
        self.term = term
        self.key = key
        self.count = count
        self.valid = valid
        self.index = index
        self.value = value
        super().__init__(
            f"{term}: {key} has {count} non-finite value(s) at valid positions "
            f"(of {valid} valid); first at {index} = {value}. Find where the NaN/inf comes from "
            "(e.g. embeddings, learning rate) before computing the loss"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields: rebuild explicitly so the error survives pickling (xdist).
        return (
            _rebuild_nonfinite,
            (self.term, self.key, self.count, self.valid, self.index, self.value),
        )


def _rebuild_nonfinite(
    term: str, key: str, count: int, valid: int, index: tuple[int, ...], value: float
) -> NonFiniteOutputError:
    return NonFiniteOutputError(term, key, count=count, valid=valid, index=index, value=value)


# --------------------------------------------------------------------------------------------
# Argument and input validation (host-side only, except the one fused sync in _check_values)
# --------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _require_tensor(term: str, key: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{term}: {key} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _require_floating(term: str, key: str, t: Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(
            f"{term}: {key} must be a floating tensor, got {t.dtype}; convert it with .float()"
        )


def _require_integer(term: str, key: str, t: Tensor) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(
            f"{term}: {key} must hold integer ids, got {t.dtype}; convert it with .long()"
        )


def _require_real(term: str, key: str, t: Tensor) -> None:
    if t.is_complex():
        raise ValueError(f"{term}: {key} must be real (bool, integer or floating), got {t.dtype}")


def _require_same_shape(term: str, a_key: str, a: Tensor, b_key: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{term}: {b_key} shape {_shape(b)} does not match {a_key} {_shape(a)}; shapes "
            "must be equal (no broadcasting, no slicing): reshape one of them"
        )


def _require_same_device(term: str, named: Sequence[tuple[str, Tensor]]) -> None:
    devices = {t.device for _, t in named}
    if len(devices) > 1:
        where = ", ".join(f"{key} on {t.device}" for key, t in named)
        raise ValueError(f"{term}: tensors must be on one device, got {where}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a term is computed and returned in: the floating promotion, halves -> float32."""
    dtype: torch.dtype | None = None
    for t in tensors:
        if t.is_floating_point() and t.dtype is not dtype:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype is None or dtype in _HALF_DTYPES:
        return torch.float32
    return dtype


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the call (about an op's dispatch) when ``t`` already has it."""
    return t if t.dtype is dtype else t.to(dtype)


def _validate_penalty(name: str, value: object) -> float:
    number = math.nan
    # Real numbers (Python, NumPy) or a one-element real tensor; never bool or str.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        number = float(value.detach().cpu().reshape(()))
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
    return number


def _validate_class_weights(value: object) -> Tensor | None:
    if value is None:
        return None
    try:
        weights = torch.as_tensor(value).detach().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"class_weights must be a 1-D tensor of finite weights >= 0, got {value!r}"
        ) from exc
    if weights.dtype == torch.bool or weights.is_complex():
        raise ValueError(f"class_weights must be real numbers, got dtype {weights.dtype}")
    if not weights.is_floating_point():
        weights = weights.to(torch.get_default_dtype())
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(
            "class_weights must be a non-empty 1-D tensor (one weight per class), "
            f"got shape {_shape(weights)}"
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(
            f"class_weights must be finite and >= 0, got class_weights={weights.tolist()}"
        )
    return weights


# A check is (key, tensor, valid-or-None[, upper]): ``valid`` broadcasts against ``tensor``.
_FiniteCheck = tuple[str, Tensor, Tensor | None]
_IdCheck = tuple[str, Tensor, Tensor | None, int]


def _first_bad(bad: Tensor, tensor: Tensor) -> tuple[tuple[int, ...], float]:
    index = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
    return index, float(tensor[index].item())


def _valid_count(tensor: Tensor, valid: Tensor | None) -> int:
    if valid is None:
        return tensor.numel()
    return int(torch.broadcast_to(valid, tensor.shape).sum().item())


class _PendingCheck(NamedTuple):
    """One term's finite/id checks: a 0-dim flag per check, not yet read.

    A finite check's flag is finite when every valid entry is finite (and non-finite
    otherwise, or when a screen overflowed); an id check's flag counts the valid ids out of
    range. Only the error path computes which entries are bad.
    """

    term: str
    finite: Sequence[_FiniteCheck]
    ids: Sequence[_IdCheck]
    ids_bad: list[Tensor]
    flags: list[Tensor]
    retry: Callable[[], Tensor] | None = None


# Set by MultiTaskLoss.forward: while it holds a list, _check_values queues its flags there
# and forward reads every term's flags back in a single host sync (one fused reduction per
# call). A ContextVar, so concurrent forwards in threads don't share the queue.
_DEFERRED: ContextVar[list[_PendingCheck] | None] = ContextVar("_DEFERRED", default=None)
# Set by MultiTaskLoss.forward around _total: the terms whose head is absent (their exact 0
# is left out of the total instead of costing a multiply and an add each).
_ABSENT_TERMS: ContextVar[frozenset[str]] = ContextVar("_ABSENT_TERMS", default=frozenset())


def _finite_flag(tensor: Tensor, valid: Tensor | None) -> Tensor:
    """A float64 flag, finite when every valid entry of ``tensor`` is finite: their sum.

    NaN and ±inf propagate into a sum and a float32 or half sum cannot overflow in float64,
    so one ``where`` and one ``sum`` decide it (two ops, none without a mask). A float64 sum
    of finite values may overflow: the error path then finds no bad entry and raises nothing.
    """
    if valid is not None:
        tensor = torch.where(valid, tensor, 0.0)
    return tensor.sum(dtype=torch.float64)


def _check_values(
    term: str,
    finite: Sequence[_FiniteCheck],
    ids: Sequence[_IdCheck] = (),
    screens: Mapping[str, tuple[Tensor, Tensor | None]] | None = None,
    clamped: Mapping[str, Tensor] = MappingProxyType({}),
    retry: Callable[[], Tensor] | None = None,
) -> Tensor | None:
    """Raise on non-finite values or out-of-range ids at valid positions; one host sync.

    Inside :meth:`MultiTaskLoss.forward` the check is queued instead and forward raises after
    one sync for all terms (callers then must not index with unchecked ids: they clamp).

    ``screens`` maps a key of ``finite`` to a smaller ``(tensor, valid)`` that is non-finite
    wherever the full tensor has a non-finite valid entry (e.g. its sums over the last
    dimension, or the term's own value when every valid entry reaches it: NaN and ±inf
    propagate into a sum of squares). The normal path then reads only the screen; a 0-dim
    screen without a mask is read as it is (no op at all). A flagged screen is confirmed on
    the full tensor, so a finite sum that merely overflowed raises nothing.

    ``clamped`` maps every key of ``ids`` to that tensor already clamped to ``[0, upper)``
    (as the caller needs it for indexing anyway): an id is out of range where the two
    differ, one comparison instead of two (and no Python bound to compare with an integer
    dtype that cannot hold it).

    ``retry`` recomputes the term the careful way (pre-scaled sums) for a term that was
    computed the quick way and screens with its own value: when that screen is non-finite
    but no valid entry is (the quick sum overflowed), the retried value replaces the term.

    Returns:
        The retried term when it replaces the caller's (only outside forward; inside, forward
        swaps it in after its sync), else ``None``.

    Raises:
        NonFiniteOutputError: naming the first tensor with a non-finite valid entry.
        ValueError: naming the first id tensor with an entry outside ``[0, upper)``.
    """
    finite = [c for c in finite if c[1].is_floating_point()]
    flags: list[Tensor] = []
    ids_bad: list[Tensor] = []
    # No no_grad block (it costs as much as an op): the flags are taken of detached tensors,
    # and a screen that is a term's value is only read, never differentiated.
    for key, tensor, valid in finite:
        if screens is not None and key in screens:
            tensor, valid = screens[key]
            if valid is None and tensor.ndim == 0:
                flags.append(tensor)  # finite when fine: the flag needs no op
                continue
        flags.append(_finite_flag(tensor.detach(), valid))
    for key, tensor, valid, _ in ids:
        bad = clamped[key] != tensor
        ids_bad.append(bad if valid is None else bad.logical_and_(valid))
        # count_nonzero, not sum(dtype=float64): no float64 copy of the mask (1 pass).
        flags.append(torch.count_nonzero(ids_bad[-1]).to(torch.float64))
    if not flags:
        return None
    pending = _PendingCheck(term, finite, ids, ids_bad, flags, retry)
    queue = _DEFERRED.get()
    if queue is not None:
        queue.append(pending)
        return None
    return _raise_pending([pending]).get(term)


def _raise_pending(pending: Sequence[_PendingCheck]) -> dict[str, Tensor]:
    """Read every queued flag back in one host sync; raise for the first bad entry.

    Returns:
        term -> its retried value, for the terms whose quick sum overflowed (see
        :func:`_check_values`).
    """
    # A screen shared by several checks (a term's value screens its prediction and its
    # truth) is read once.
    distinct: dict[int, Tensor] = {}
    counts: list[int] = []  # the id checks' flags (counts of bad ids), by id
    for check in pending:
        for flag in check.flags:
            distinct.setdefault(id(flag), flag)
        counts.extend(id(flag) for flag in check.flags[len(check.finite) :])
    if not distinct:
        return {}
    tensors = list(distinct.values())
    # The one host sync: every flag of every queued term read back together (a flag may be
    # a term's own value, float32 or float64: stack promotes).
    values: list[float]
    if len(tensors) == 1:
        values = [cast(float, tensors[0].tolist())]  # 0-dim: a Python float
    else:
        with torch.no_grad():
            values = torch.stack(tensors).tolist()
    host = dict(zip(distinct, values, strict=True))
    if all(map(math.isfinite, values)) and not any(host[key] for key in counts):
        return {}  # the usual case: nothing to raise, no quick sum overflowed
    retried: dict[str, Tensor] = {}
    for check in pending:
        overflowed = _raise_first(check, [host[id(flag)] for flag in check.flags])
        if overflowed and check.retry is not None:
            retried[check.term] = check.retry()
    return retried


def _raise_first(check: _PendingCheck, found: Sequence[float]) -> bool:
    """Raise for the first bad entry; True when a screen was flagged but nothing was bad."""
    term, finite, ids = check.term, check.finite, check.ids
    if all(map(math.isfinite, found[: len(finite)])) and not any(found[len(finite) :]):
        return False
    overflowed = False
    for (key, tensor, valid), flag in zip(finite, found[: len(finite)], strict=True):
        if math.isfinite(flag):
            continue
        # Error path only: find the bad entries on the full tensor (a flagged screen may
        # also be a finite sum that overflowed: then nothing is bad).
        with torch.no_grad():
            bad = ~torch.isfinite(tensor)
            bad = bad if valid is None else bad & valid
            count = int(bad.sum())
        if count:
            index, value = _first_bad(bad, tensor)
            raise NonFiniteOutputError(
                term,
                key,
                count=count,
                valid=_valid_count(tensor, valid),
                index=index,
                value=value,
            )
        overflowed = True
    for (key, tensor, valid, upper), bad, out_of_range in zip(
        ids, check.ids_bad, found[len(finite) :], strict=True
    ):
        if out_of_range:
            index, value = _first_bad(bad, tensor)
            raise ValueError(
                f"{term}: {key} has {int(out_of_range)} id(s) outside [0, {upper}) at valid "
                f"positions (of {_valid_count(tensor, valid)} valid); first at {index} = "
                f"{int(value)}. Ids must index the last dimension of the prediction"
            )
    return overflowed


def _count_inputs(
    count_pred: Tensor, count_true: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The count term's validation; returns ``(pred, true, valid)``, ``valid`` ``[B, A, 1]``.

    Raises:
        ValueError: on a shape mismatch, naming both shapes.
        NonFiniteOutputError: on NaN/inf at a valid ASV of the prediction or the truth.
    """
    pred, true, valid = _count_shapes(count_pred, count_true, mask)
    _check_values("count_loss", [("count_prediction", pred, valid), ("counts", true, valid)])
    return pred, true, valid


def _count_shapes(
    count_pred: Tensor, count_true: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_count_inputs` without the values check (the caller screens the values).

    Raises:
        ValueError: on a shape mismatch, naming both shapes.
    """
    term = "count_loss"
    pred = _require_tensor(term, "count_prediction", count_pred)
    true = _require_tensor(term, "counts", count_true)
    mask = _require_tensor(term, "mask", mask)
    _require_floating(term, "count_prediction", pred)
    _require_real(term, "counts", true)
    _require_real(term, "mask", mask)
    if pred.ndim != 3 or pred.shape[-1] != 1:
        raise ValueError(f"{term}: count_prediction must be [B, A, 1], got shape {_shape(pred)}")
    _require_same_shape(term, "count_prediction", pred, "counts", true)
    if mask.shape != pred.shape[:-1]:
        raise ValueError(
            f"{term}: mask shape {_shape(mask)} does not match count_prediction "
            f"{_shape(pred)}; expected mask [B, A] = {_shape(pred)[:-1]}"
        )
    _require_same_device(term, [("count_prediction", pred), ("counts", true), ("mask", mask)])
    valid = (mask if mask.dtype == torch.bool else mask != 0).unsqueeze(-1)
    return pred, true, valid


def _screened_by(value: Tensor, *keys: str) -> dict[str, tuple[Tensor, None]]:
    """``screens`` for :func:`_check_values`: ``value`` (a term) screens each of ``keys``.

    A mean of squares (or of absolute values) of the valid differences is non-finite
    whenever a valid entry of either side is: NaN and ±inf survive the selection, the
    difference (``inf - inf`` is NaN), the square and the sum of non-negative terms. A finite
    mean that overflowed is confirmed on the full tensors and raises nothing.
    """
    return {key: (value, None) for key in keys}


# --------------------------------------------------------------------------------------------
# Numerics: pre-scaled means over selected positions
# --------------------------------------------------------------------------------------------


def _pow2_scales(n: int, *, squared: bool) -> tuple[float, float]:
    """Pre- and post-scale for a mean over ``n >= 0`` terms counted on the host.

    ``pre = 2**-k`` multiplies each term (each difference, before squaring, when ``squared``)
    so that every partial sum stays <= the mean: a representable mean never overflows in the
    sum. ``post = 1 / (n * pre**p)`` (``p`` = 2 when squared, else 1) lies in ``(1, 4]`` and
    restores the mean. Power-of-two scaling is exact, so the result rounds like ``sum / n``.
    """
    count = max(n, 1)
    exponent = math.frexp(count)[1]  # count < 2**exponent
    k = (exponent + 1) // 2 if squared else exponent
    power = 2 * k if squared else k
    return math.ldexp(1.0, -k), math.ldexp(1.0, power) / count


def _pow2_scales_of(count: Tensor, *, squared: bool) -> tuple[Tensor, Tensor]:
    """:func:`_pow2_scales` for a count held in a 0-dim floating tensor (no host sync)."""
    count = count.clamp(min=1.0)
    exponent = torch.frexp(count).exponent
    k = (exponent + 1) // 2 if squared else exponent
    power = 2 * k if squared else k
    return torch.ldexp(torch.ones_like(count), -k), torch.ldexp(1.0 / count, power)


_Scale = Tensor | float


def _mse(pred: Tensor, true: Tensor, pre: _Scale, post: _Scale) -> Tensor:
    """``mean((pred - true)**2)`` of already-selected inputs, scaled by ``_pow2_scales``."""
    diff = (pred - true) * pre
    return (diff * diff).sum() * post


def _mean_square(diff: Tensor, bound: int, count: Tensor) -> Tensor:
    """``sum(diff**2) / count`` for ``1 <= count <= bound`` selected entries.

    ``count`` is a 0-dim tensor in ``diff``'s dtype (no host sync). It is the pre-scaled
    retry of a quick ``sum / count`` whose sum overflowed, so some entry is selected: no
    guard against ``count = 0``.

    ``diff`` holds 0 at unselected entries. ``pre`` comes from the host-side ``bound`` (a
    smaller ``pre`` only keeps the partial sums further below the mean), and the sum is
    divided by ``count * pre**2``: one rounding, as ``sum / count`` has, and one node fewer
    in the backward than a separate rescale.
    """
    pre, _ = _pow2_scales(bound, squared=True)
    scaled = diff * pre
    # count * pre**2 is exact (a power-of-two scaling of an integer): one division rounds.
    return (scaled * scaled).sum() / (count * (pre * pre))


def _mae(pred: Tensor, true: Tensor, pre: _Scale, post: _Scale) -> Tensor:
    """``mean(|pred - true|)``, scaled by ``_pow2_scales(n, squared=False)``."""
    # Halving is exact for normal numbers and keeps the difference finite at +-finfo.max.
    half = (pred * 0.5 - true * 0.5).abs()
    return (half * pre).sum() * (2.0 * post)


def _huber(pred: Tensor, true: Tensor, pre: _Scale, post: _Scale) -> Tensor:
    """Huber loss with ``HUBER_DELTA``, scaled by ``_pow2_scales(n, squared=False)``."""
    # huber(d) = 0.5 * a**2 + delta * (|d| - a) with a = min(|d|, delta): no branch to select,
    # so no unselected branch can overflow; |d| - a is written on the halved difference so
    # that it is exactly 0 in the quadratic regime.
    half = (pred * 0.5 - true * 0.5).abs()
    quad = torch.clamp(half * 2.0, max=HUBER_DELTA)
    linear = half - quad * 0.5
    elements = quad * quad * (0.5 * pre) + linear * (2.0 * HUBER_DELTA * pre)
    return elements.sum() * post


# --------------------------------------------------------------------------------------------
# Masked cross-entropy (the nucleotide term): one forward pass, one backward pass
# --------------------------------------------------------------------------------------------


#: Rows of logits per block of the nucleotide term on the cpu, per torch thread: a block's
#: class-major workspace (``V`` x rows floats, 768 KiB at V = 6) stays in cache through the
#: block's passes, where passes over all ``M`` rows each went out to memory.
NUC_BLOCK_ROWS = 32768


class _MaskedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the valid rows of ``[M, V]`` logits, its gradient written once.

    The forward runs block by block (:func:`_cross_entropy_rows`) on a class-major
    ``[V, rows]`` copy of each block of logits: a reduction over the ``V`` classes is then
    an elementwise operation across ``V`` contiguous planes, several times faster than a
    reduction over rows of only ``V`` (4 to 6) elements, and the block stays in cache.

    Per row, in the compute dtype: ``x`` = the logits with padded rows set to 0 (so garbage
    there stays finite), ``m = max(x)``, ``e = exp(x - m)``, ``s = sum(e)`` and
    ``nll = (m - x[id]) + log(s)``: both parts are >= 0, so nothing cancels and the error
    scales with the logits' spread, not their size (equal logits of any magnitude give
    ``log V``). ``m - x[id]`` is taken halved (``m/2 - x[id]/2`` is exact and cannot
    overflow) and each row is weighted by ``w = valid * 2 * pre`` (see :func:`_pow2_scales`),
    so a representable mean never overflows. Valid rows that held NaN/±inf give a garbage
    value: the caller's non-finite check (``screen``, the weighted row sums) raises before
    the value is returned.

    When the caller will differentiate (``with_grad``), the same blocks also write the
    gradient of the loss for an upstream gradient of 1, ``(e / s - onehot) * valid / n``,
    into a new ``[M, V]`` tensor: exactly 0 at padded rows (``e`` and ``s`` are finite there
    and the weight is 0). The backward scales it in place by the upstream gradient and
    returns it: one pass. A second backward (``retain_graph=True``) recomputes it from the
    logits. Under ``create_graph=True`` the gradient is recomputed with differentiable ops
    instead, so double backward works.

    Returns ``(loss, screen)``: the 0-dim loss and a 0-dim screen for the non-finite check
    (not differentiable): the sum of the valid rows' raw sums, weighted by ``w``, NaN/±inf
    whenever a valid row holds NaN/±inf.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        ids: Tensor,
        valid: Tensor,
        pre: Tensor,
        post: Tensor,
        with_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        weight = torch.where(valid, pre * 2.0, 0.0)
        unit = weight * (0.5 * post) if with_grad else None  # valid / n: d loss / d nll
        top, picked, row_sums, total, grad = _cross_entropy_rows(
            logits, ids, valid, pre.dtype, unit
        )
        half_gap = torch.add(top * 0.5, picked, alpha=-0.5)  # (m - x[id]) / 2 >= 0, finite
        nll_half = torch.add(half_gap, total.log_(), alpha=0.5)  # total >= 1: exp(0) at m
        loss = torch.dot(nll_half, weight) * post
        # A NaN/±inf logit makes its row's sum, and this weighted sum of the row sums,
        # non-finite. The rows are weighted like the mean, so finite logits overflow it only
        # within a factor 2V of finfo.max (a flag the caller then confirms on the logits).
        screen = torch.dot(row_sums, weight)
        ctx.mark_non_differentiable(screen)
        ctx.set_materialize_grads(False)  # the screen's gradient is never needed, not even as 0
        ctx.save_for_backward(logits, ids, valid, weight, post)
        ctx.grad = grad
        return loss, screen

    @staticmethod
    def backward(
        ctx: Any, grad_loss: Tensor | None, grad_screen: Tensor | None
    ) -> tuple[Tensor | None, None, None, None, None, None]:
        if grad_loss is None:
            return None, None, None, None, None, None
        logits, ids, valid, weight, post = ctx.saved_tensors
        vocab = logits.shape[-1]
        if torch.is_grad_enabled():
            # create_graph=True: the same gradient from differentiable ops (double backward).
            coef = weight * (grad_loss * (0.5 * post)).to(weight.dtype)  # valid * g / n
            x = logits.reshape(-1, vocab).to(weight.dtype)
            safe = torch.where(valid.unsqueeze(1), x, 0.0)
            probs = torch.softmax(safe, dim=1)
            onehot = torch.zeros_like(probs).scatter_(1, ids.unsqueeze(1), 1.0)
            grad = (probs - onehot) * coef.unsqueeze(1)
            return grad.reshape(logits.shape).to(logits.dtype), None, None, None, None, None
        written: Tensor | None = ctx.grad
        ctx.grad = None
        if written is None:
            # A second backward through a retained graph: the first one scaled the gradient.
            unit = weight * (0.5 * post)
            written = _cross_entropy_rows(logits, ids, valid, weight.dtype, unit)[-1]
        scaled = cast(Tensor, written).mul_(grad_loss.to(weight.dtype))
        return scaled.reshape(logits.shape).to(logits.dtype), None, None, None, None, None


def _cross_entropy_rows(
    logits: Tensor, ids: Tensor, valid: Tensor, dtype: torch.dtype, unit: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Per row of the ``[..., V]`` logits: ``max(x)``, ``x[id]``, ``sum(x)``, ``sum(exp(x - max))``.

    Computed in ``dtype`` on the logits with padded rows set to 0 (so garbage there stays
    finite; valid rows are as given, NaN/±inf included). With ``unit`` (``[M]``, the weight
    of each row's cross-entropy in the loss) it also returns the ``[M, V]`` gradient
    ``(softmax(x) - onehot(id)) * unit``, else ``None``.

    On the cpu the rows go in blocks of :data:`NUC_BLOCK_ROWS` per torch thread, each
    through one class-major workspace (:func:`_class_major`); elsewhere, in one block.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    rows = flat.shape[0]
    block = rows
    if flat.device.type == "cpu":
        block = min(rows, NUC_BLOCK_ROWS * max(torch.get_num_threads(), 1))
    top, picked, row_sums, total = flat.new_empty((4, rows), dtype=dtype)
    grad = flat.new_empty((rows, vocab), dtype=dtype) if unit is not None else None
    workspace = flat.new_empty((vocab, block), dtype=dtype)
    zero = workspace.new_zeros(())
    picks = ids.unsqueeze(0)
    for start in range(0, rows, max(block, 1)):
        end = min(start + block, rows)
        part = slice(start, end)
        by_class = _class_major(flat[part].to(dtype), valid[part], workspace, zero)
        torch.sum(by_class, dim=0, out=row_sums[part])
        block_top = torch.amax(by_class, dim=0, out=top[part])
        torch.gather(by_class, 0, picks[:, part], out=picked[part].unsqueeze(0))
        exp = by_class.sub_(block_top).exp_()
        block_total = torch.sum(exp, dim=0, out=total[part])  # >= 1: the maximum's exp(0)
        if grad is not None and unit is not None:
            shifted = exp.scatter_add_(0, picks[:, part], block_total.neg().unsqueeze(0))
            # The multiply writes through the transposed view of the block's gradient rows:
            # the copy back to [rows, V] costs no pass of its own.
            torch.mul(shifted, unit[part] / block_total, out=grad[part].t())
    return top, picked, row_sums, total, grad


def _class_major(x: Tensor, valid: Tensor, workspace: Tensor, zero: Tensor) -> Tensor:
    """``x.T`` with ``zero`` in the columns of rows not ``valid``, written into ``workspace``.

    ``x`` is ``[rows, V]``, ``valid`` ``[rows]`` bool, ``workspace`` ``[V, >= rows]``
    contiguous, ``zero`` a 0-dim 0 of its dtype (made once per call of the loss, not per
    block); returns the workspace's first ``rows`` columns. One pass: :func:`torch.where` writes
    through the transposed view. An identity product ``I @ x.T`` through BLAS would be an
    exact copy only while matmuls run in IEEE float32 (a bf16 or tf32 math mode, set
    through torch or the BLAS's own environment, would silently round the logits), so it
    is not used.
    """
    by_class = workspace[:, : x.shape[0]]
    torch.where(valid.unsqueeze(1), x, zero, out=by_class.t())
    return by_class


# --------------------------------------------------------------------------------------------
# Pairwise distances
# --------------------------------------------------------------------------------------------


def compute_pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distances between every pair of sample embeddings.

    All pairs come from the Gram form ``|u_i|² + |u_j|² - 2 u_i·u_j`` of the centred,
    scaled rows ``u`` (one matrix product, not ``B²·D`` differences). Where that form can
    lose digits to cancellation (``d² < (|u_i|² + |u_j|²) / 2``: rows close together
    against their distance from the batch's centre) the distance is recomputed exactly
    from direct differences, scaled by the pair's largest component so neither squares of
    huge values overflow nor squares of tiny ones underflow: identical rows give distance
    exactly 0 with gradient 0, rows 1e-6 apart give ~1e-6 with a non-zero gradient. NaN/inf
    rows give non-finite distances (never a silent 0). On the cpu only the flagged pairs are
    recomputed (picked with :func:`torch.nonzero`, which costs no device sync there); on
    other devices, where it would, every pair is computed directly.

    The backward is written out (:class:`_PairwiseDistances`): the gradient of row ``i`` is
    ``sum_j (G_ij + G_ji) (u_i - u_j) / |u_i - u_j|``, from the Gram form's rows for the
    pairs it computed and from the exact unit directions for the recomputed ones (0 for
    identical rows). Under ``create_graph=True`` the backward is recomputed with
    differentiable ops, so double backward works.

    Args:
        embeddings: ``[B, D]`` floating tensor, ``D >= 1``.

    Returns:
        ``[B, B]`` distances with a zero diagonal, in float32 for half inputs, else in the
        input's dtype.

    Raises:
        TypeError: if ``embeddings`` is not a tensor.
        ValueError: if it is not 2-D floating with at least one feature.
    """
    return _pairwise_distances(embeddings)[0]


def _pairwise_distances(embeddings: Tensor) -> tuple[Tensor, Tensor | None]:
    """:func:`compute_pairwise_distances` and a screen of the embeddings (see ``_check_values``).

    The screen is a 0-dim tensor, non-finite whenever an embedding is (the largest centred
    component in the Gram form, the embeddings' sum in the direct one: NaN and ±inf reach
    both; a sum that merely overflowed is confirmed on the embeddings), or ``None`` for an
    empty batch.
    """
    emb = _pairwise_input(embeddings)
    if emb.shape[0] == 0:
        return emb.new_zeros((0, 0)) + emb.sum() * 0.0, None  # still a function of the input
    distances: Tensor
    screen: Tensor
    distances, screen = _PairwiseDistances.apply(emb)  # type: ignore[no-untyped-call]
    return distances, screen


def _pairwise_input(embeddings: Tensor) -> Tensor:
    """Validate ``[B, D]`` embeddings; return them in the compute dtype (float32 for halves).

    Raises:
        TypeError: if ``embeddings`` is not a tensor.
        ValueError: if it is not 2-D floating with at least one feature.
    """
    term = "compute_pairwise_distances"
    _require_tensor(term, "embeddings", embeddings)
    _require_floating(term, "embeddings", embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        raise ValueError(
            f"{term}: embeddings must be [B, D] with D >= 1, got shape {_shape(embeddings)}"
        )
    return _as(embeddings, _compute_dtype(embeddings))


class _PairwiseDistances(torch.autograd.Function):
    """``[B, D] -> [B, B]`` distances (Gram form, exact where it could cancel) and a screen.

    Forward, without a graph: rows are centred on the batch mean and scaled by the largest
    centred component, both on halves (``x/2 - m/2`` cannot overflow), so the squares stay
    finite and normal; the half mean is one product with a row of ``-1/2B`` (each partial
    sum at most ``finfo.max / 2``), since summing rows near ``finfo.max`` first would
    overflow. A pair is flagged where
    ``d² <= (|u_i|² + |u_j|²) / 2``; elsewhere the rounding of the three terms (each about
    ``eps·sqrt(D)·|u|²``) is amplified at most twofold in ``d²``. Flagged pairs (every pair
    off the cpu) are recomputed from direct differences (:func:`_direct_distances`).

    Backward writes ``grad_i = sum_j W_ij (u_i - u_j)`` as ``u_i * sum_j W_ij - (W @ u)_i``
    with ``W = (G + G^T) / |u_i - u_j|`` on the Gram pairs (where ``|u_i - u_j|`` is not
    small against the rows, so nothing cancels badly), plus ``(G_ij + G_ji)`` times the
    exact unit direction of each recomputed pair, which is 0 for identical rows. The
    centre and the scale do not change a distance, so no gradient flows through them.
    """

    @staticmethod
    def forward(ctx: Any, emb: Tensor) -> tuple[Tensor, Tensor]:
        distances, scale, saved = _pairwise_forward(emb)
        # The input through save_for_backward (double backward differentiates it); the
        # forward's own intermediates on ctx, which saves packing each one.
        ctx.save_for_backward(emb)
        ctx.intermediates = saved[1:]
        ctx.mark_non_differentiable(scale)
        ctx.set_materialize_grads(False)  # the screen's gradient is never needed, not even as 0
        return distances, scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, grad_screen: Tensor | None) -> Tensor | None:
        if grad is None:
            return None
        return _pairwise_backward((*ctx.saved_tensors, *ctx.intermediates), grad)


# Up to this many B²·D, the cpu takes every pair from direct differences (torch.cdist with
# its Gram mode off, and cdist's own backward kernel): then one B²·D pass costs less than the
# Gram form's dozen extra ops (crossover measured near B = 48 at D = 128, one thread).
_DIRECT_LIMIT = 2**18
_CDIST_BACKWARD: Callable[..., Tensor] | None = getattr(torch.ops.aten, "_cdist_backward", None)


# dtype -> the direct form's bounds on a pair's distance: between them every squared
# component that matters is a normal number (the largest one is at least low²/D, normal for D
# up to 2^18) and their sum cannot overflow. Pairs outside are recomputed with their own scale.
_DIRECT_BOUNDS: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2.0**-40, 2.0**60),
    torch.float64: (2.0**-400, 2.0**500),
}


def _direct_mode(emb: Tensor) -> bool:
    """Whether the pairs of ``emb`` come from direct differences (else the Gram form)."""
    size, dim = emb.shape
    return (
        emb.device.type == "cpu"
        and size * size * dim <= _DIRECT_LIMIT
        and emb.dtype in _DIRECT_BOUNDS
        and _CDIST_BACKWARD is not None
    )


def _pairwise_forward(
    emb: Tensor, *, zero_diagonal: bool = True
) -> tuple[Tensor, Tensor, tuple[Tensor | None, ...]]:
    """:class:`_PairwiseDistances`' forward: ``(distances, screen, saved for backward)``.

    ``zero_diagonal=False`` leaves the diagonal as the pairs' form gives it (about 0) for a
    caller that never reads it.
    """
    size = emb.shape[0]
    neg_centre: Tensor | None = None
    safe_scale: Tensor | None = None
    if _direct_mode(emb):
        # Direct differences need neither centring (a difference does not cancel) nor
        # scaling: between the bounds every square is normal and finite. Pairs outside them
        # are recomputed with their own scale. The screen is a plain sum (NaN/inf rows reach
        # it; a sum that merely overflowed is confirmed on the embeddings).
        scale = emb.sum()
        pair_units = torch.cdist(emb, emb, compute_mode="donot_use_mm_for_euclid_dist")
        low, high = _DIRECT_BOUNDS[emb.dtype]
        # NaN compares False: a NaN pair is not flagged and its NaN reaches the result.
        flagged = (pair_units < low).logical_or_(pair_units > high)
        u = emb
        # The distances themselves (the recomputed pairs are written into them below; the
        # backward never reads those entries).
        distances = pair_units
    else:
        # x/2 - m/2 as one product and one add: m/2 = (-1/2B, ...) @ x, each partial sum at
        # most finfo.max/2, and halving is exact, so neither side can overflow.
        neg_centre = _centring_row(size, emb.dtype, emb.device) @ emb  # [1, D]
        half = torch.add(neg_centre, emb, alpha=0.5)
        scale = half.abs().amax()  # NaN/inf rows reach it
        # Identical rows (scale 0) give u = 0; a NaN scale (a NaN/inf row) keeps NaN in every
        # u, never a silent 0. Dividing by the power of two ``tiny`` is exact.
        safe_scale = scale.clamp(min=torch.finfo(emb.dtype).tiny)
        u = half.div_(safe_scale)
        gram = u @ u.T
        # The norms are the product's diagonal: each squared distance of a row to itself is
        # then exactly 0, and no separate pass over the rows is needed.
        norms = gram.diagonal()
        pair_norms = torch.add(norms.unsqueeze(1), norms)
        squared = torch.sub(pair_norms, gram, alpha=2.0)
        # NaN compares False: a NaN pair is not flagged and its NaN reaches the result.
        flagged = squared <= pair_norms.mul_(0.5)
        pair_units = squared.clamp_(min=0.0).sqrt_()  # |u_i - u_j| of the Gram pairs
        distances = pair_units * (2.0 * safe_scale)
    if emb.device.type == "cpu":
        rows, cols = torch.triu(flagged, diagonal=1).nonzero(as_tuple=True)
    else:
        pairs = torch.triu_indices(size, size, offset=1, device=emb.device)
        rows, cols = pairs[0], pairs[1]
        flagged.fill_(True)
    units = None
    if rows.numel():  # a host-side size on the cpu: no sync
        direct, units = _direct_distances(emb[rows], emb[cols])
        distances.index_put_((rows, cols), direct).index_put_((cols, rows), direct)
    if zero_diagonal:
        distances.diagonal().zero_()
    saved = (emb, u, pair_units, flagged, rows, cols, units, neg_centre, safe_scale)
    return distances, scale, saved


def _pairwise_backward(saved: Sequence[Any], grad: Tensor) -> Tensor:
    """:class:`_PairwiseDistances`' backward: the embeddings' gradient for ``grad [B, B]``.

    ``saved`` is :func:`_pairwise_forward`'s third result (``units`` is ``None`` when no
    pair was recomputed).
    """
    emb, u, pair_units, flagged, rows, cols, units, neg_centre, scale = saved
    direct = _direct_mode(emb)
    both = grad + grad.T
    along = None
    diffs: Tensor | None = None
    differentiable = torch.is_grad_enabled()
    if differentiable:
        # create_graph=True: the same gradient from differentiable ops (double backward).
        u = emb if direct else torch.add(neg_centre, emb, alpha=0.5) / scale
        if direct:
            diffs = u.unsqueeze(1) - u.unsqueeze(0)  # [B, B, D]
            squared = (diffs * diffs).sum(dim=-1)
        else:
            gram = u @ u.T
            norms = gram.diagonal()
            squared = norms.unsqueeze(1) + norms.unsqueeze(0) - 2.0 * gram
        pair_units = torch.where(flagged, 1.0, squared).sqrt()
        if rows.numel():
            units = _direct_distances(emb[rows], emb[cols])[1]
    if units is not None:  # the recomputed pairs, along their exact unit directions
        along = both[rows, cols].unsqueeze(1) * units
    if differentiable:
        weights = torch.where(flagged, 0.0, both / pair_units)
        if diffs is not None:
            out = (weights.unsqueeze(-1) * diffs).sum(dim=1)
        else:
            out = torch.addmm(u * weights.sum(dim=1, keepdim=True), weights, u, alpha=-1.0)
    elif direct and _CDIST_BACKWARD is not None:
        # sum_j W_ij (u_i - u_j) / |u_i - u_j| from each pair's own difference: exact for
        # close pairs, where the product form's two large terms would cancel. ``both`` is
        # this backward's own (and read above); flagged pairs are left to ``along``.
        out = _CDIST_BACKWARD(both.masked_fill_(flagged, 0.0), u, u, 2.0, pair_units)
    else:
        # ``both`` is this backward's own (and read above): divided and masked in place (at
        # a flagged pair ``pair_units`` may be 0; the quotient there is overwritten).
        weights = both.div_(pair_units).masked_fill_(flagged, 0.0)
        out = torch.addmm(u * weights.sum(dim=1, keepdim=True), weights, u, alpha=-1.0)
    if along is not None:
        out = out.index_add(0, rows, along).index_add(0, cols, along, alpha=-1.0)
    return out


class _PairwiseMeanSquare(torch.autograd.Function):
    """The unifrac base term straight from embeddings: ``mean((d_ij - t_ij)²)`` off the diagonal.

    One Function instead of the distances' Function and five autograd nodes of the mean:
    forward is :func:`_pairwise_forward` and the quick (unscaled) mean of the selected
    squared differences; backward writes ``G = 2 (d - t) g / n`` at valid pairs (0 at the
    diagonal, whatever the truth holds there) and hands it to :func:`_pairwise_backward`.
    Under ``create_graph=True`` the gradient is recomputed through the differentiable
    distances, so double backward works. Returns ``(loss, screen)``; the screen is the
    embeddings' (see :func:`_pairwise_distances`).
    """

    @staticmethod
    def forward(ctx: Any, emb: Tensor, true: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        distances, scale, saved = _pairwise_forward(emb, zero_diagonal=False)
        diff = _as(distances, true.dtype) - true
        diff.diagonal().zero_()  # the diagonal is padding, whatever either side holds there
        pairs = max(valid.shape[0] * (valid.shape[0] - 1), 1)
        loss = (diff * diff).sum() / pairs
        ctx.pairs = pairs
        # Inputs through save_for_backward, the forward's own intermediates on ctx (as in
        # _PairwiseDistances).
        ctx.save_for_backward(emb, true, valid)
        ctx.intermediates = (diff, *saved[1:])
        # One flag for both sides: non-finite when the embeddings are (their scale) or a
        # valid truth is (the loss); a sum that merely overflowed is confirmed and retried.
        screen = scale + loss
        ctx.mark_non_differentiable(screen)
        ctx.set_materialize_grads(False)  # the screen's gradient is never needed, not even as 0
        return loss, screen

    @staticmethod
    def backward(
        ctx: Any, grad_loss: Tensor | None, grad_screen: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None]:
        if grad_loss is None:
            return None, None, None
        emb, true, valid = ctx.saved_tensors
        diff, *rest = ctx.intermediates
        saved = (emb, *rest)
        if torch.is_grad_enabled():
            distances = _PairwiseDistances.apply(emb)[0]  # type: ignore[no-untyped-call]
            diff = torch.where(valid, _as(distances, true.dtype) - true, 0.0)
        grad = diff * (grad_loss * (2.0 / ctx.pairs))
        grad_emb = None
        if ctx.needs_input_grad[0]:
            grad_emb = _pairwise_backward(saved, _as(grad, emb.dtype))
        grad_true = -grad if ctx.needs_input_grad[1] else None
        return grad_emb, grad_true, None


@functools.lru_cache(maxsize=32)
def _cached_centring_row(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.full((1, size), -0.5 / size, dtype=dtype, device=device)


def _centring_row(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[1, B]`` of ``-1 / 2B``: its product with ``[B, D]`` rows is minus half their mean.

    Cached like :func:`_off_diagonal` (only read, never leaves this module).
    """
    if torch.is_inference_mode_enabled():
        return _cached_centring_row.__wrapped__(size, dtype, device)
    return _cached_centring_row(size, dtype, device)


@functools.lru_cache(maxsize=32)
def _cached_off_diagonal(size: int, device: torch.device) -> Tensor:
    return ~torch.eye(size, dtype=torch.bool, device=device)


def _off_diagonal(size: int, device: torch.device) -> Tensor:
    """``[B, B]`` bool, True off the diagonal, cached per size and device.

    It depends on nothing else, is only read, and never leaves this module. Not cached
    under inference mode, whose tensors autograd could not save later.
    """
    if torch.is_inference_mode_enabled():
        return ~torch.eye(size, dtype=torch.bool, device=device)
    return _cached_off_diagonal(size, device)


def _direct_distances(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """``|left_k - right_k|`` per row from direct differences, and its unit direction.

    The difference is scaled by its largest component, so neither squares of huge values
    overflow nor squares of tiny ones (subnormal differences) underflow; the direction is
    0 where the rows are identical (distance 0, gradient 0).
    """
    diff = left - right  # [K, D]
    # The scale is a constant to autograd (double backward differentiates the direction):
    # ``diff / s`` over its norm is the same for any s, and through s the gradient would
    # hold ``diff / s²``, inf once s² underflows (subnormal differences).
    scale = diff.abs().amax(dim=-1, keepdim=True).detach()  # [K, 1]
    # "!= 0" rather than "> 0" so a NaN scale propagates instead of becoming distance 0.
    nonzero = scale != 0
    ratio = diff / torch.where(nonzero, scale, 1.0)
    # When scale != 0 the largest |ratio| is 1, so the norm is >= 1.
    norm = (ratio * ratio).sum(dim=-1, keepdim=True).sqrt_()
    units = torch.where(nonzero, ratio / torch.where(nonzero, norm, 1.0), 0.0)
    return (scale * norm).squeeze(-1), units


# --------------------------------------------------------------------------------------------
# The loss module
# --------------------------------------------------------------------------------------------

# forward's keys: term -> (output key, required target keys).
_HEADS: dict[str, tuple[str, tuple[str, ...]]] = {
    "target_loss": ("target_prediction", ("target",)),
    "count_loss": ("count_prediction", ("counts", "mask")),
    "base_loss": ("base_prediction", ("base_target",)),
    "nuc_loss": ("nuc_predictions", ("nucleotides", "nuc_mask")),
}


class MultiTaskLoss(nn.Module):
    """Weighted sum of AAM's target, count, base and nucleotide losses.

    ``total = target_penalty * target + count_penalty * count + penalty * base
    + nuc_penalty * nuc``.

    Args:
        penalty: weight of the base (UniFrac / Faith PD) term.
        nuc_penalty: weight of the nucleotide term.
        class_weights: optional ``[K]`` non-negative finite weights for classification
            (a buffer, so it moves with ``.to(device)``).
        target_penalty: weight of the target term.
        count_penalty: weight of the count term.
        target_loss_type: regression loss, one of ``"mse"``, ``"mae"``, ``"huber"``
            (Huber with ``delta = HUBER_DELTA``).

    Raises:
        ValueError: naming the argument and its value, for a negative or non-finite penalty,
            class weights that are not a non-empty 1-D finite non-negative tensor, or an
            unknown ``target_loss_type``.
    """

    class_weights: Tensor | None

    def __init__(
        self,
        penalty: float = 1.0,
        nuc_penalty: float = 1.0,
        class_weights: Tensor | None = None,
        target_penalty: float = 1.0,
        count_penalty: float = 1.0,
        target_loss_type: str = "mse",
    ) -> None:
        super().__init__()
        self.penalty = _validate_penalty("penalty", penalty)
        self.nuc_penalty = _validate_penalty("nuc_penalty", nuc_penalty)
        self.target_penalty = _validate_penalty("target_penalty", target_penalty)
        self.count_penalty = _validate_penalty("count_penalty", count_penalty)
        if target_loss_type not in TARGET_LOSS_TYPES:
            raise ValueError(
                f"target_loss_type must be one of {', '.join(TARGET_LOSS_TYPES)}, "
                f"got target_loss_type={target_loss_type!r}"
            )
        self.target_loss_type = target_loss_type
        self.register_buffer("class_weights", _validate_class_weights(class_weights))

    def extra_repr(self) -> str:
        """Constructor arguments, for ``print(module)``."""
        return (
            f"penalty={self.penalty}, nuc_penalty={self.nuc_penalty}, "
            f"target_penalty={self.target_penalty}, count_penalty={self.count_penalty}, "
            f"target_loss_type={self.target_loss_type!r}"
        )

    # ---------------------------------------------------------------------------- target

    def compute_target_loss(
        self, target_pred: Tensor, target_true: Tensor, is_classifier: bool = False
    ) -> Tensor:
        """Regression loss (``target_loss_type``) or class-weighted NLL over log-probabilities.

        Regression: ``target_pred`` and ``target_true`` of the same shape (e.g. ``[B, D]``),
        mean over all elements. Classification: ``target_pred`` ``[B, K]`` log-probabilities,
        ``target_true`` ``[B]`` integer class ids; with ``class_weights`` the mean is
        ``sum(w[y] * nll) / sum(w[y])``, and exactly 0 when the selected weights sum to 0.

        Returns:
            0-dim tensor (float32 for half inputs).

        Raises:
            ValueError: on a shape mismatch (naming both shapes), non-integer or
                out-of-range class ids, or class weights whose length is not ``K``.
            NonFiniteOutputError: on NaN/inf in the prediction or the truth.
        """
        term = "target_loss"
        pred = _require_tensor(term, "target_prediction", target_pred)
        true = _require_tensor(term, "target", target_true)
        _require_floating(term, "target_prediction", pred)
        _require_same_device(term, [("target_prediction", pred), ("target", true)])
        if is_classifier:
            return self._classification_loss(pred, true)
        _require_real(term, "target", true)
        _require_same_shape(term, "target_prediction", pred, "target", true)
        dtype = _compute_dtype(pred, true)
        p, t = _as(pred, dtype), _as(true, dtype)
        retry: Callable[[], Tensor] | None = None
        if self.target_loss_type == "mse":
            # One fused op and one backward node; should its sum overflow, the check swaps in
            # the pre-scaled mean.
            loss = _mse_loss(p, t)
            retry = lambda: _mse(p, t, *_pow2_scales(pred.numel(), squared=True))  # noqa: E731
        else:
            reduce = _mae if self.target_loss_type == "mae" else _huber
            loss = reduce(p, t, *_pow2_scales(pred.numel(), squared=False))
        # Every entry reaches the loss (MSE, MAE and Huber all keep NaN and ±inf), so the
        # loss screens both tensors.
        retried = _check_values(
            term,
            [("target_prediction", pred, None), ("target", true, None)],
            screens=_screened_by(loss, "target_prediction", "target"),
            retry=retry,
        )
        return loss if retried is None else retried

    def _classification_loss(self, pred: Tensor, ids: Tensor) -> Tensor:
        term = "target_loss"
        _require_integer(term, "target", ids)
        if pred.ndim != 2 or pred.shape[1] == 0:
            raise ValueError(
                f"{term}: classification expects target_prediction log-probabilities [B, K] "
                f"with K >= 1, got shape {_shape(pred)}"
            )
        if ids.ndim != 1 or ids.shape[0] != pred.shape[0]:
            raise ValueError(
                f"{term}: target shape {_shape(ids)} does not match target_prediction "
                f"{_shape(pred)}; classification expects class ids [B] = ({pred.shape[0]},)"
            )
        num_classes = pred.shape[1]
        weights = self.class_weights
        if weights is not None and weights.shape[0] != num_classes:
            raise ValueError(
                f"{term}: class_weights has {weights.shape[0]} entries but target_prediction "
                f"has K={num_classes} classes {_shape(pred)}; give one weight per class"
            )
        dtype = _compute_dtype(pred)
        # Clamped for indexing only: inside forward the range check is still queued, and an
        # out-of-range index would be a bare IndexError (a device-side assert on cuda).
        ids_long = ids.long().clamp(0, num_classes - 1)
        # Only the picked log-probabilities reach the loss: the whole prediction is checked.
        _check_values(
            term,
            [("target_prediction", pred, None)],
            [("target", ids, None, num_classes)],
            clamped={"target": ids_long},
        )
        nll = -pred.to(dtype).gather(1, ids_long.unsqueeze(1)).squeeze(1)  # [B]
        if weights is None:
            pre, post = _pow2_scales(nll.shape[0], squared=False)
            return (nll * pre).sum() * post
        weights = weights.to(pred.device)
        # Normalise by the largest weight first so sum(w[y]) cannot overflow for huge weights.
        # Normalise in the wider of the weights' and the compute dtype, then cast: float32
        # weights used to be divided in float32, which put a float32 rounding of w / max(w)
        # into float64 losses (C-REF-1 found it with weights (3, 1, 1)).
        weights = weights.to(torch.promote_types(weights.dtype, dtype))
        top = weights.amax()
        weights = (weights / torch.where(top > 0, top, torch.ones_like(top))).to(dtype)
        selected = weights[ids_long]
        total = selected.sum()
        has_weight = total > 0
        # C-WEIGHT-1: a safe denominator, so all-zero weights give 0 (not 0/0): every
        # selected weight is then 0 and every nll finite (a non-finite prediction raises
        # before the loss is returned), so no select of 0 is needed after the sum.
        denom = torch.where(has_weight, total, torch.ones_like(total))
        return ((selected / denom) * nll).sum()

    # ---------------------------------------------------------------------------- count

    def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor) -> Tensor:
        """MSE over real (non-padding) ASVs.

        Args:
            count_pred: ``[B, A, 1]`` predicted counts.
            count_true: ``[B, A, 1]`` true counts.
            mask: ``[B, A]`` bool/int/float; an ASV is valid where ``mask != 0``.

        Returns:
            0-dim tensor; exactly 0 (and connected to ``count_pred``) with no valid ASV.

        Raises:
            ValueError: on a shape mismatch, naming both shapes.
            NonFiniteOutputError: on NaN/inf at a valid ASV of the prediction or the truth.
        """
        pred, true, valid = _count_shapes(count_pred, count_true, mask)
        dtype = _compute_dtype(pred, true)
        # Selected after the subtraction: a padded position's difference may be NaN, but
        # where passes it neither to the value nor (its gradient there is exactly 0) back.
        diff = torch.where(valid, _as(pred, dtype) - _as(true, dtype), 0.0)
        # An int64 count: the division promotes it, so it needs no cast of its own.
        count = torch.count_nonzero(valid).clamp_(min=1)
        # The quick mean first; should its sum overflow, the check swaps in the pre-scaled one.
        loss = (diff * diff).sum() / count
        checks: list[_FiniteCheck] = [("count_prediction", pred, valid), ("counts", true, valid)]
        retried = _check_values(
            "count_loss",
            checks,
            screens=_screened_by(loss, "count_prediction", "counts"),
            retry=lambda: _mean_square(diff, valid.numel(), count.to(dtype)),
        )
        return loss if retried is None else retried

    # ---------------------------------------------------------------------------- base

    def compute_base_loss(
        self, base_pred: Tensor, base_true: Tensor, encoder_type: str = "unifrac"
    ) -> Tensor:
        """MSE between predicted and true UniFrac distances (or Faith PD values).

        Args:
            base_pred: ``[B, B]`` pairwise distances (unifrac; the diagonal is ignored and may
                hold anything) or ``[B, 1]`` (faith_pd).
            base_true: same shape as ``base_pred``.
            encoder_type: ``"unifrac"`` or ``"faith_pd"``.

        Returns:
            0-dim tensor; 0 for unifrac with ``B = 1`` (no off-diagonal pair).

        Raises:
            ValueError: on an unknown ``encoder_type`` or a shape mismatch (both shapes named).
            NonFiniteOutputError: on NaN/inf at a valid entry of the prediction or the truth.
        """
        return self._base_loss(base_pred, base_true, encoder_type, "base_prediction")

    def _base_loss(
        self,
        base_pred: Tensor,
        base_true: Tensor,
        encoder_type: str,
        pred_key: str,
        source: tuple[str, Tensor, Tensor | None] | None = None,
    ) -> Tensor:
        """The base term of a prediction, or of ``source``'s pairwise distances.

        ``source`` is ``(key, embeddings, screen)`` when ``base_pred`` are their pairwise
        distances (see :func:`_pairwise_distances`): then the embeddings are checked, not
        the distances.
        """
        term = "base_loss"
        _validate_encoder_type(encoder_type)
        pred = _require_tensor(term, pred_key, base_pred)
        true = _require_tensor(term, "base_target", base_true)
        _require_floating(term, pred_key, pred)
        _require_real(term, "base_target", true)
        _require_same_device(term, [(pred_key, pred), ("base_target", true)])
        dtype = _compute_dtype(pred, true)
        if encoder_type == "faith_pd":
            if pred.ndim != 2 or pred.shape[1] != 1 or pred.shape != true.shape:
                raise ValueError(
                    f"{term}: faith_pd expects {pred_key} and base_target [B, 1], got "
                    f"{pred_key} {_shape(pred)} and base_target {_shape(true)}"
                )
            loss = _mse(pred.to(dtype), true.to(dtype), *_pow2_scales(pred.shape[0], squared=True))
            self._check_base(loss, pred_key, pred, true, None, source)
            return loss
        if pred.ndim != 2 or pred.shape[0] != pred.shape[1] or pred.shape != true.shape:
            raise ValueError(
                f"{term}: {pred_key} shape {_shape(pred)} does not match base_target "
                f"{_shape(true)}; unifrac expects pairwise distances [B, B] for both (no "
                "slicing: give a full [B, B] prediction, e.g. from the batch's embeddings)"
            )
        size = pred.shape[0]
        # Off-diagonal entries only: the diagonal of a predicted distance matrix is padding.
        valid = _off_diagonal(size, pred.device)
        diff = torch.where(valid, pred.to(dtype) - true.to(dtype), 0.0)
        pairs = size * (size - 1)
        # The quick mean first; should its sum overflow, the check swaps in the pre-scaled one.
        loss = (diff * diff).sum() / max(pairs, 1)
        retried = self._check_base(
            loss,
            pred_key,
            pred,
            true,
            valid,
            source,
            retry=lambda: _mean_square(diff, pairs, diff.new_tensor(float(pairs))),
        )
        return loss if retried is None else retried

    def _embeddings_base_loss(self, embeddings: Tensor, base_true: Tensor) -> Tensor:
        """The unifrac base term of ``embeddings``' pairwise distances, as one Function.

        Same value, errors and checks as :meth:`_base_loss` on
        :func:`compute_pairwise_distances` of the embeddings (which it falls back to for an
        empty batch), with the distances' and the mean's backward fused
        (:class:`_PairwiseMeanSquare`).
        """
        term = "base_loss"
        pred_key = "base_prediction (pairwise distances of embeddings)"
        emb = _pairwise_input(embeddings)
        size = emb.shape[0]
        true = _require_tensor(term, "base_target", base_true)
        if size == 0:
            distances, none = _pairwise_distances(embeddings)
            source = ("embeddings", embeddings, none)
            return self._base_loss(distances, true, "unifrac", pred_key, source=source)
        _require_real(term, "base_target", true)
        _require_same_device(term, [(pred_key, emb), ("base_target", true)])
        if true.shape != (size, size):
            raise ValueError(
                f"{term}: {pred_key} shape {(size, size)} does not match base_target "
                f"{_shape(true)}; unifrac expects pairwise distances [B, B] for both (no "
                "slicing: give a full [B, B] prediction, e.g. from the batch's embeddings)"
            )
        dtype = _compute_dtype(emb, true)
        valid = _off_diagonal(size, emb.device)
        truth = _as(true, dtype)
        loss: Tensor
        screen: Tensor
        loss, screen = _PairwiseMeanSquare.apply(emb, truth, valid)  # type: ignore[no-untyped-call]

        def retry() -> Tensor:
            diff = torch.where(valid, compute_pairwise_distances(emb).to(dtype) - truth, 0.0)
            pairs = size * (size - 1)
            return _mean_square(diff, pairs, diff.new_tensor(float(pairs)))

        retried = self._check_base(
            screen, pred_key, emb, true, valid, ("embeddings", embeddings, screen), retry=retry
        )
        return loss if retried is None else retried

    @staticmethod
    def _check_base(
        screen_of_truth: Tensor,
        pred_key: str,
        pred: Tensor,
        true: Tensor,
        valid: Tensor | None,
        source: tuple[str, Tensor, Tensor | None] | None,
        retry: Callable[[], Tensor] | None = None,
    ) -> Tensor | None:
        # ``screen_of_truth`` (the loss, or a flag that includes it) screens every valid entry
        # of both sides. Distances computed here from finite embeddings may still overflow
        # (rows near finfo.max apart): that is an inf loss, as the float64 reference has,
        # not a non-finite model output, so with a source only the embeddings are checked,
        # screened by their own flag (the loss misses them at B = 1, where no pair reaches
        # it).
        checks: list[_FiniteCheck] = [("base_target", true, valid)]
        screens: dict[str, tuple[Tensor, Tensor | None]] = {"base_target": (screen_of_truth, None)}
        if source is None:
            checks.insert(0, (pred_key, pred, valid))
            screens[pred_key] = (screen_of_truth, None)
        else:
            key, embeddings, screen = source
            checks.insert(0, (key, embeddings, None))
            if screen is not None:
                screens[key] = (screen, None)
        return _check_values("base_loss", checks, screens=screens, retry=retry)

    # ---------------------------------------------------------------------------- nucleotide

    def compute_nucleotide_loss(self, nuc_pred: Tensor, nuc_true: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy over real sequence positions.

        Args:
            nuc_pred: ``[B, A, L, V]`` logits.
            nuc_true: ``[B, A, L]`` integer nucleotide ids in ``[0, V)`` at valid positions
                (anything, e.g. ``-100``, at padded ones).
            mask: ``[B, A, L]`` bool/int/float; a position is valid where ``mask != 0``.

        Returns:
            0-dim tensor (computed in float32 or wider); exactly 0 with no valid position.
            Shift-invariant: equal logits of any finite magnitude give ``log V``. The
            gradient is ``(softmax - onehot) / n`` at valid positions and exactly 0 at padded
            ones, written once by the forward (:class:`_MaskedCrossEntropy`); double
            backward (``create_graph=True``) works too.

        Raises:
            ValueError: on a shape mismatch (both shapes named), non-integer ids, or ids
                outside ``[0, V)`` at valid positions.
            NonFiniteOutputError: on NaN/inf logits at a valid position.
        """
        term = "nuc_loss"
        logits = _require_tensor(term, "nuc_predictions", nuc_pred)
        ids = _require_tensor(term, "nucleotides", nuc_true)
        mask = _require_tensor(term, "nuc_mask", mask)
        _require_floating(term, "nuc_predictions", logits)
        _require_integer(term, "nucleotides", ids)
        _require_real(term, "nuc_mask", mask)
        if logits.ndim != 4 or logits.shape[-1] == 0:
            raise ValueError(
                f"{term}: nuc_predictions must be logits [B, A, L, V] with V >= 1, got shape "
                f"{_shape(logits)}"
            )
        expected = _shape(logits)[:-1]
        if ids.shape != logits.shape[:-1]:
            raise ValueError(
                f"{term}: nucleotides shape {_shape(ids)} does not match nuc_predictions "
                f"{_shape(logits)}; expected [B, A, L] = {expected}"
            )
        if mask.shape != logits.shape[:-1]:
            raise ValueError(
                f"{term}: nuc_mask shape {_shape(mask)} does not match nuc_predictions "
                f"{_shape(logits)}; expected [B, A, L] = {expected}"
            )
        _require_same_device(
            term, [("nuc_predictions", logits), ("nucleotides", ids), ("nuc_mask", mask)]
        )
        vocab = logits.shape[-1]
        valid = mask if mask.dtype == torch.bool else mask != 0
        dtype = _compute_dtype(logits)
        pre, post = _pow2_scales_of(torch.count_nonzero(valid).to(dtype), squared=False)
        # Clamped for gather/scatter (ids at padded positions may hold anything; inside
        # forward the range check is queued until after the gather) and for that check.
        safe_ids = ids.long().clamp(0, vocab - 1)
        loss: Tensor
        screen: Tensor
        with_grad = torch.is_grad_enabled() and logits.requires_grad
        loss, screen = _MaskedCrossEntropy.apply(  # type: ignore[no-untyped-call]
            logits, safe_ids.reshape(-1), valid.reshape(-1), pre, post, with_grad
        )
        _check_values(
            term,
            [("nuc_predictions", logits, valid.unsqueeze(-1))],
            [("nucleotides", ids, valid, vocab)],
            screens={"nuc_predictions": (screen, None)},
            clamped={"nucleotides": safe_ids},
        )
        return loss

    # ---------------------------------------------------------------------------- forward

    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        is_classifier: bool = False,
        encoder_type: str = "unifrac",
    ) -> dict[str, Tensor]:
        """Compute every term and the weighted total.

        Args:
            outputs: model outputs: ``target_prediction``, ``count_prediction``,
                ``base_prediction``, ``nuc_predictions`` and optionally ``embeddings``
                ``[B, D]`` (with unifrac the base prediction is then
                ``compute_pairwise_distances(embeddings)``). An absent head contributes 0.
            targets: ``target``, ``counts``, ``mask``, ``base_target``, ``nucleotides``,
                ``nuc_mask``, as the present heads need.
            is_classifier: treat the target head as classification (NLL).
            encoder_type: ``"unifrac"`` or ``"faith_pd"``.

        Returns:
            ``{"target_loss", "count_loss", "base_loss", "nuc_loss", "total_loss"}``, each a
            0-dim tensor.

        Raises:
            TypeError: if ``outputs`` or ``targets`` is not a mapping.
            ValueError: if a present head's target or mask is missing (naming the term and
                the key), on an unknown ``encoder_type``, or any error of the ``compute_*``
                methods.
            NonFiniteOutputError: on NaN/inf at a valid position.
        """
        for name, value in (("outputs", outputs), ("targets", targets)):
            if type(value) is not dict and not isinstance(value, Mapping):
                raise TypeError(
                    f"MultiTaskLoss: {name} must be a dict of tensors, got {type(value).__name__}"
                )
        _validate_encoder_type(encoder_type)
        use_embeddings = encoder_type == "unifrac" and "embeddings" in outputs
        present = {
            term: key in outputs or (term == "base_loss" and use_embeddings)
            for term, (key, _) in _HEADS.items()
        }
        for term, (key, needed) in _HEADS.items():
            if not present[term]:
                continue
            for target_key in needed:
                if target_key not in targets:
                    given = "embeddings" if term == "base_loss" and use_embeddings else key
                    raise ValueError(
                        f"{term}: outputs has {given!r} but targets lacks {target_key!r}; "
                        f"pass targets[{target_key!r}] or drop the head"
                    )
        token = _DEFERRED.set([])
        try:
            losses = self._terms(outputs, targets, is_classifier, encoder_type, present)
            pending = _DEFERRED.get()
        finally:
            _DEFERRED.reset(token)
        # One host sync for every term's non-finite and id checks, before anything returns;
        # a term whose quick sum overflowed is replaced by its pre-scaled value.
        losses.update(_raise_pending(pending or []))
        absent = frozenset(term for term, here in present.items() if not here)
        absent_token = _ABSENT_TERMS.set(absent)
        try:
            losses["total_loss"] = self._total(losses)
        finally:
            _ABSENT_TERMS.reset(absent_token)
        return losses

    def _terms(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        is_classifier: bool,
        encoder_type: str,
        present: Mapping[str, bool],
    ) -> dict[str, Tensor]:
        use_embeddings = encoder_type == "unifrac" and "embeddings" in outputs
        zero = self._zero(outputs)
        losses = {term: zero for term in _HEADS}
        if present["target_loss"]:
            losses["target_loss"] = self.compute_target_loss(
                outputs["target_prediction"], targets["target"], is_classifier
            )
        if present["count_loss"]:
            losses["count_loss"] = self.compute_count_loss(
                outputs["count_prediction"], targets["counts"], targets["mask"]
            )
        if use_embeddings:
            embeddings = _require_tensor("base_loss", "embeddings", outputs["embeddings"])
            losses["base_loss"] = self._embeddings_base_loss(embeddings, targets["base_target"])
        elif present["base_loss"]:
            losses["base_loss"] = self.compute_base_loss(
                outputs["base_prediction"], targets["base_target"], encoder_type
            )
        if present["nuc_loss"]:
            losses["nuc_loss"] = self.compute_nucleotide_loss(
                outputs["nuc_predictions"], targets["nucleotides"], targets["nuc_mask"]
            )
        return losses

    def _total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Penalty-weighted sum in which a zero penalty contributes an exact, connected 0.

        ``0 * term`` would turn a term that overflowed to inf into NaN (and its gradient into
        NaN too), so a zero-penalty term goes through ``torch.where`` instead: the value is
        exactly 0 and the gradient it passes back is exactly 0, yet ``total.backward()``
        still reaches the head (C-EMPTY-1). An absent head's exact 0 is left out of the
        sum (it adds nothing, and each term costs an op and a node in the graph).
        """
        absent = _ABSENT_TERMS.get()
        total: Tensor | None = None
        off: Tensor | None = None
        for term, weight in (
            ("target_loss", self.target_penalty),
            ("count_loss", self.count_penalty),
            ("base_loss", self.penalty),
            ("nuc_loss", self.nuc_penalty),
        ):
            if term in absent:
                continue
            value = losses[term]
            if weight == 1.0:
                part = value  # 1 * value is value, bit for bit: no op, no backward node
            elif weight != 0.0:
                part = weight * value
            else:
                if off is None:
                    off = torch.zeros((), dtype=torch.bool, device=value.device)
                part = torch.where(off, value, 0.0)
            total = part if total is None else total + part
        if total is None:  # no head at all: the exact 0 of an absent head
            return losses["target_loss"].clone()
        return total

    @staticmethod
    def _zero(outputs: Mapping[str, object]) -> Tensor:
        """Exact 0 for an absent head, on the outputs' device and in their compute dtype."""
        tensors = [v for v in outputs.values() if isinstance(v, Tensor)]
        floating = [t for t in tensors if t.is_floating_point()]
        device = tensors[0].device if tensors else None
        return torch.zeros((), dtype=_compute_dtype(*floating), device=device)


def _validate_encoder_type(encoder_type: object) -> None:
    if encoder_type not in ENCODER_TYPES:
        raise ValueError(
            f"base_loss: encoder_type must be one of {', '.join(ENCODER_TYPES)}, "
            f"got encoder_type={encoder_type!r}"
        )
