"""The one tolerance table every rule uses.

A tolerance is derived from the machine epsilon of the dtype the *result* was computed in and
from the size of the reduction: summing ``n`` rounded terms has a relative error that grows
like ``sqrt(n)`` for random rounding, and we allow a fixed safety factor on top. ``atol`` is
``rtol`` times a caller-given ``scale`` (the magnitude of the quantities that cancel, e.g. the
largest logit for a cross-entropy), so results near zero are judged against the size of what
produced them rather than against an arbitrary absolute floor.

Gradients (C-GRAD-1) use the same formula through :func:`gradient_tolerance`, with a budget
that fits a gradient entry rather than a value: see its docstring.

Never loosen a factor to make a test pass; if one must change, say why in the commit message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SAFETY_FACTOR", "Tolerance", "gradient_tolerance", "mismatch", "tolerance"]

#: Multiplier on ``eps * sqrt(n)``; one number for every dtype.
SAFETY_FACTOR = 16.0

#: Floor for ``atol`` in units of the dtype's smallest normal number, so an exact-zero
#: reference accepts a result that underflowed to a subnormal.
_TINY_FLOOR = 4.0


@dataclass(frozen=True)
class Tolerance:
    """``rtol``/``atol`` for :func:`torch.testing.assert_close` (always given together)."""

    rtol: float
    atol: float

    def describe(self) -> str:
        """Return ``"rtol=..., atol=..."`` for messages."""
        return f"rtol={self.rtol:.3g}, atol={self.atol:.3g}"


def mismatch(
    actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance, *, equal_nan: bool = False
) -> str | None:
    """``None`` where :func:`torch.testing.assert_close` passes under ``tol``, else its message.

    For two dense, plain float64 tensors of one shape on one device this decides with the test
    ``assert_close`` itself applies to them once those attributes match
    (``torch.isclose(actual, expected, rtol, atol, equal_nan).all()``), so the verdict is the
    same, and calls ``assert_close`` only to word a failure; anything else goes to it whole.
    Its first call imports ``torch.distributed.tensor`` to unwrap DTensors, and with it sympy:
    0.55 s of CPU in each of the gate's processes (torch 2.13, 2 cores), for tensors that are
    never DTensors.
    """
    plain = (
        type(actual) is torch.Tensor
        and type(expected) is torch.Tensor
        and actual.dtype == expected.dtype == torch.float64
        and actual.layout == expected.layout == torch.strided
        and actual.shape == expected.shape
        and actual.device == expected.device
    )
    if plain and bool(
        torch.isclose(actual, expected, rtol=tol.rtol, atol=tol.atol, equal_nan=equal_nan).all()
    ):
        return None
    try:
        torch.testing.assert_close(
            actual, expected, rtol=tol.rtol, atol=tol.atol, equal_nan=equal_nan
        )
    except AssertionError as exc:
        return str(exc)
    return None


def tolerance(dtype: torch.dtype, *, n: int = 1, scale: float = 1.0) -> Tolerance:
    """Tolerance for a result whose precision is ``dtype``, reduced over ``n`` terms.

    Args:
        dtype: the floating dtype of the *inputs* (for half inputs the rule still allows only
            the half-precision tolerance, as the contract's C-DTYPE-1 says).
        n: number of terms summed to produce the result (>= 1).
        scale: magnitude of the quantities that may cancel; ``atol = rtol * scale``.

    Raises:
        ValueError: if ``dtype`` is not floating point, ``n < 1`` or ``scale`` is negative or
            not finite.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"tolerance needs a floating dtype, got {dtype}")
    if n < 1:
        raise ValueError(f"tolerance needs n >= 1 terms, got n={n}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"tolerance needs a finite scale >= 0, got scale={scale}")
    info = torch.finfo(dtype)
    rtol = SAFETY_FACTOR * info.eps * math.sqrt(n)
    atol = max(rtol * scale, _TINY_FLOOR * info.tiny)
    return Tolerance(rtol=rtol, atol=atol)


def gradient_tolerance(dtype: torch.dtype, *, fan_in: int = 1, scale: float = 0.0) -> Tolerance:
    """Tolerance for one entry of a loss gradient (C-GRAD-1), from the same table.

    Every term is a (weighted) mean ``w / N * sum_i f(x_i)``, so one gradient entry is
    ``w / N * f'(x_i)``: it is *not* a sum over the ``N`` terms, and its rounding does not grow
    with ``N`` the way a value's does (``w / N`` is applied once, a relative ``eps``). What an
    entry does reduce is its own backward's inputs, ``fan_in`` of them: the ``V`` logits of
    one softmax, the ``B`` selected class weights of a weighted NLL, the ``B * E`` differences
    of one embedding row in the pairwise base term. So ``rtol = SAFETY_FACTOR * eps *
    sqrt(fan_in)``, exactly :func:`tolerance`'s formula with ``n = fan_in``.

    ``scale`` is the size of what cancels inside the entry (``atol = rtol * scale``), 0 when
    nothing does (a squared error's ``2 (p - t) w / N`` is one rounded difference times a
    constant: relative error only). For a cross-entropy it is ``w / N * (1 + log V)``: a
    shift-stable softmax ``exp(x - max - log sum exp(x - max))`` has an absolute error of at
    most about ``eps * (p |log p| + p log V) <= eps * (1 + log V)`` per entry, *whatever the
    size or spread of the logits* (the gradient is shift-invariant, so its tolerance is too).
    A softmax taken as ``exp(x - logsumexp(x))`` instead errs by ``eps * |logsumexp(x)|``
    relative, which grows with the logits' magnitude: that is a bug this tolerance exposes.

    Args:
        dtype: the floating dtype of the *inputs* (half inputs: half-precision tolerance).
        fan_in: number of quantities the entry's backward reduces (>= 1).
        scale: magnitude that may cancel inside the entry; ``atol = rtol * scale``.

    Raises:
        ValueError: if ``dtype`` is not floating point, ``fan_in < 1`` or ``scale`` is
            negative or not finite.
    """
    if fan_in < 1:
        raise ValueError(f"gradient_tolerance needs fan_in >= 1, got fan_in={fan_in}")
    return tolerance(dtype, n=fan_in, scale=scale)
