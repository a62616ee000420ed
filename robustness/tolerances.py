"""The one tolerance table every rule uses.

A tolerance is derived from the machine epsilon of the dtype the *result* was computed in and
from the size of the reduction: summing ``n`` rounded terms has a relative error that grows
like ``sqrt(n)`` for random rounding, and we allow a fixed safety factor on top. ``atol`` is
``rtol`` times a caller-given ``scale`` (the magnitude of the quantities that cancel, e.g. the
largest logit for a cross-entropy), so results near zero are judged against the size of what
produced them rather than against an arbitrary absolute floor.

Never loosen a factor to make a test pass; if one must change, say why in the commit message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SAFETY_FACTOR", "Tolerance", "tolerance"]

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
