"""Strategies for dtypes, float elements, tensors, non-contiguous views and masks.

Everything is built from Hypothesis primitives (``hypothesis.strategies`` and
``hypothesis.extra.numpy``) and converted to torch on the cpu, so examples shrink: sizes are
drawn before values, and every ``sampled_from`` lists its simplest choice first.

Hypothesis cannot draw bfloat16 directly. A bfloat16 value is a float32 whose low 16 bits are
zero, so bfloat16 elements are float32 draws with those bits cleared (truncation towards zero:
the result is always exactly representable and never overflows), carried in float32 arrays and
converted to bfloat16 exactly.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustness.errors import HarnessUsageError

__all__ = [
    "FLOAT_DTYPES",
    "KINDS",
    "MASK_DTYPES",
    "MASK_PATTERNS",
    "bfloat16_exact",
    "dtype_name",
    "dtypes",
    "float_elements",
    "masks",
    "noncontiguous",
    "tensors",
]

#: Floating dtypes of the input space, in the order Hypothesis shrinks towards.
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)

#: Kinds of values: moderate, finite extremes of the dtype, anything (NaN and ±inf included).
KINDS = ("ordinary", "extreme", "garbage")

#: Mask dtypes; a position is valid where ``mask != 0``.
MASK_DTYPES = (torch.bool, torch.int64, torch.int32, torch.float32, torch.float64)

#: Mask layouts :func:`masks` draws, simplest first.
MASK_PATTERNS = (
    "trailing_padding",
    "all_valid",
    "all_padding",
    "single_valid",
    "leading_padding",
    "interleaved",
)

#: Bound of "ordinary" values: squares and sums of a few hundred stay far from float16's max
#: (65504) once widened to float32, so ordinary draws exercise logic, not range.
_ORDINARY = 64.0

# Width of the float Hypothesis draws for each dtype (bfloat16 is carried in float32).
_WIDTH = {torch.float64: 64, torch.float32: 32, torch.float16: 16, torch.bfloat16: 32}
_NUMPY = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: np.float32,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def bfloat16_exact(value: float) -> float:
    """Clear the low 16 bits of ``value`` as a float32, giving a bfloat16-representable float.

    ``value`` must already be representable in float32 (Hypothesis draws with ``width=32``).
    """
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    (out,) = struct.unpack("<f", struct.pack("<I", bits & 0xFFFF0000))
    return float(out)


def _check_float_dtype(name: str, dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        names = ", ".join(f"torch.{dtype_name(d)}" for d in FLOAT_DTYPES)
        raise HarnessUsageError(f"{name} must be one of {names}, got {name}={dtype!r}")
    return dtype


def _check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise HarnessUsageError(
            f"kind must be one of {', '.join(map(repr, KINDS))}, got kind={kind!r}"
        )
    assert isinstance(kind, str)
    return kind


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise HarnessUsageError(f"{name} must be True or False, got {name}={value!r}")
    return value


# --------------------------------------------------------------------------- dtypes, elements


def dtypes(*, allow_half: bool = True) -> st.SearchStrategy[torch.dtype]:
    """Floating dtypes of the input space: float64, float32 and (optionally) float16, bfloat16.

    Args:
        allow_half: include float16 and bfloat16.

    Raises:
        HarnessUsageError: if ``allow_half`` is not a bool.
    """
    _check_bool("allow_half", allow_half)
    return st.sampled_from([d for d in FLOAT_DTYPES if allow_half or d not in _HALF])


def _floats(dtype: torch.dtype, **kwargs: Any) -> st.SearchStrategy[float]:
    """``st.floats`` at the dtype's width, made exactly representable for bfloat16."""
    floats = st.floats(width=_WIDTH[dtype], **kwargs)  # type: ignore[arg-type]
    return floats.map(bfloat16_exact) if dtype == torch.bfloat16 else floats


def _signed(values: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.tuples(values, st.booleans()).map(lambda vs: -vs[0] if vs[1] else vs[0])


def _finfo(dtype: torch.dtype) -> tuple[float, float, float, float]:
    """``(max, tiny, smallest subnormal, sqrt(max))`` of ``dtype`` as Python floats."""
    info = torch.finfo(dtype)
    smallest_subnormal = info.tiny * info.eps  # exact: both are powers of two
    root = torch.tensor(math.sqrt(info.max), dtype=torch.float64).to(dtype).item()
    return float(info.max), float(info.tiny), smallest_subnormal, float(root)


def float_elements(dtype: torch.dtype, *, kind: str = "ordinary") -> st.SearchStrategy[float]:
    """Python floats exactly representable in ``dtype``, of the given kind.

    * ``"ordinary"``: moderate values in ``[-64, 64]`` (0, ±1, ±0.5 first), no subnormals.
    * ``"extreme"``: finite for the dtype: near ``sqrt(finfo.max)`` (squares overflow), near
      ``finfo.max``, ``finfo.tiny``, subnormals, ``-0.0`` (and some ordinary values).
    * ``"garbage"``: anything: NaN, ±inf, ±``finfo.max`` first, then any float of the dtype.

    Args:
        dtype: one of float64, float32, float16, bfloat16.
        kind: ``"ordinary"``, ``"extreme"`` or ``"garbage"``.

    Raises:
        HarnessUsageError: on an unknown dtype or kind.
    """
    return _float_elements(_check_float_dtype("dtype", dtype), _check_kind(kind))


@functools.cache
def _float_elements(dtype: torch.dtype, kind: str) -> st.SearchStrategy[float]:
    # Cached: batches draw many tensors, and building (validating) a fresh one_of each time
    # would dominate generation.
    big, tiny, sub, root = _finfo(dtype)
    ordinary = st.one_of(
        st.sampled_from([0.0, 1.0, -1.0, 0.5, -0.5, 2.0]),
        _floats(dtype, min_value=-_ORDINARY, max_value=_ORDINARY, allow_subnormal=False),
    )
    if kind == "ordinary":
        return ordinary
    if kind == "extreme":
        specials = [root, -root, big, -big, tiny, -tiny, sub, -sub, -0.0]
        return st.one_of(
            st.sampled_from(specials),
            _signed(_floats(dtype, min_value=root / 2, max_value=root * 2)),
            _signed(_floats(dtype, min_value=big / 2, max_value=big)),
            _floats(dtype, min_value=-tiny, max_value=tiny, allow_subnormal=True),
            ordinary,
        )
    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, big, -big]),
        _floats(dtype, allow_nan=True, allow_infinity=True, allow_subnormal=True),
    )


# --------------------------------------------------------------------------- tensors


def _check_shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, Sequence) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise HarnessUsageError(
            f"shape must be a tuple of non-negative ints (or a strategy of them), got "
            f"shape={shape!r}"
        )
    return tuple(shape)


def array_to_tensor(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Exact conversion of a drawn carrier array (float32 for bfloat16) to a ``dtype`` tensor."""
    out = torch.from_numpy(np.array(values, dtype=_NUMPY[dtype], copy=True))
    return out.to(dtype) if dtype == torch.bfloat16 else out


def tensors(
    shape: Sequence[int] | st.SearchStrategy[Sequence[int]],
    *,
    dtype: torch.dtype,
    kind: str = "ordinary",
    allow_noncontiguous: bool = False,
) -> st.SearchStrategy[torch.Tensor]:
    """Cpu tensors of ``shape`` and ``dtype`` whose elements are :func:`float_elements`.

    Args:
        shape: a tuple of ints, or a strategy drawing one (drawn first).
        dtype: one of float64, float32, float16, bfloat16.
        kind: ``"ordinary"``, ``"extreme"`` or ``"garbage"`` (see :func:`float_elements`).
        allow_noncontiguous: sometimes return an equal non-contiguous view
            (see :func:`noncontiguous`).

    Raises:
        HarnessUsageError: on a bad shape, dtype, kind or flag.
    """
    dtype = _check_float_dtype("dtype", dtype)
    kind = _check_kind(kind)
    _check_bool("allow_noncontiguous", allow_noncontiguous)
    if isinstance(shape, st.SearchStrategy):
        return shape.flatmap(
            lambda s: tensors(s, dtype=dtype, kind=kind, allow_noncontiguous=allow_noncontiguous)
        )
    plain = array_tensors(_check_shape(shape), dtype, kind)
    if not allow_noncontiguous:
        return plain
    return st.tuples(plain, st.booleans()).flatmap(
        lambda tb: noncontiguous(tb[0]) if tb[1] else st.just(tb[0])
    )


@functools.lru_cache(maxsize=512)
def array_tensors(
    shape: tuple[int, ...], dtype: torch.dtype, kind: str
) -> st.SearchStrategy[torch.Tensor]:
    """Unvalidated, cached core of :func:`tensors` (contiguous cpu tensors)."""
    elements = _float_elements(dtype, kind)
    return hnp.arrays(_NUMPY[dtype], shape, elements=elements).map(
        lambda a: array_to_tensor(a, dtype)
    )


# --------------------------------------------------------------------------- layouts


def strided_copy(tensor: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
    """A bit-identical non-contiguous copy: a step-2 slice of a larger buffer.

    Slices the last dimension of size >= 2; a tensor with fewer than 2 elements has no
    non-contiguous layout, so it comes back as a (contiguous) copy at a storage offset.
    """
    data = tensor.detach()
    dims = [d for d in range(data.dim()) if data.shape[d] >= 2]
    if not dims:
        buffer = torch.empty(data.numel() + offset, dtype=data.dtype, device=data.device)
        view = buffer[offset:].view(data.shape)
    else:
        dim = dims[-1]
        shape = list(data.shape)
        shape[dim] = 2 * shape[dim] + offset
        buffer = torch.zeros(shape, dtype=data.dtype, device=data.device)
        view = buffer.narrow(dim, offset, 2 * data.shape[dim] - 1)[
            (slice(None),) * dim + (slice(None, None, 2),)
        ]
    view.copy_(data)
    return view


def _transposed_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A bit-identical copy stored transposed (a Fortran-order view of the first two big dims)."""
    data = tensor.detach()
    dims = [d for d in range(data.dim()) if data.shape[d] >= 2]
    i, j = dims[0], dims[-1]
    return data.transpose(i, j).contiguous().transpose(i, j)


def noncontiguous(tensor: torch.Tensor) -> st.SearchStrategy[torch.Tensor]:
    """Equal-valued (bit-identical) non-contiguous views of ``tensor``.

    Either a transposed copy transposed back, or a strided slice (step 2, possibly at a storage
    offset) of a larger buffer. Tensors with fewer than 2 elements cannot be non-contiguous in
    torch's sense and come back as a copy. The result does not require grad.

    Args:
        tensor: any tensor.

    Raises:
        HarnessUsageError: if ``tensor`` is not a tensor.
    """
    if not isinstance(tensor, torch.Tensor):
        raise HarnessUsageError(f"noncontiguous needs a torch.Tensor, got {type(tensor).__name__}")
    big_dims = sum(1 for n in tensor.shape if n >= 2)
    options: list[st.SearchStrategy[torch.Tensor]] = [
        st.integers(0, 1).map(lambda offset: strided_copy(tensor, offset=offset))
    ]
    if big_dims >= 2:
        options.append(st.just(tensor).map(_transposed_copy))
    return st.one_of(options)


# --------------------------------------------------------------------------- masks


def _check_mask_dtype(mask_dtype: object) -> torch.dtype | None:
    if mask_dtype is not None and mask_dtype not in MASK_DTYPES:
        names = ", ".join(f"torch.{dtype_name(d)}" for d in MASK_DTYPES)
        raise HarnessUsageError(
            f"mask_dtype must be None (drawn) or one of {names}, got mask_dtype={mask_dtype!r}"
        )
    return mask_dtype if isinstance(mask_dtype, torch.dtype) else None


def mask_dtypes(mask_dtype: torch.dtype | None = None) -> st.SearchStrategy[torch.dtype]:
    """``mask_dtype`` itself, or any of :data:`MASK_DTYPES` (bool first) when ``None``."""
    checked = _check_mask_dtype(mask_dtype)
    return st.just(checked) if checked is not None else st.sampled_from(MASK_DTYPES)


def row_masks(rows: int, width: int, pattern: str) -> st.SearchStrategy[np.ndarray]:
    """Boolean ``[rows, width]`` validity (True = valid) in one of :data:`MASK_PATTERNS`."""
    if pattern == "all_valid":
        return st.just(np.ones((rows, width), dtype=bool))
    if pattern == "all_padding" or rows * width == 0:
        return st.just(np.zeros((rows, width), dtype=bool))
    if pattern == "single_valid":

        def single(index: int) -> np.ndarray:
            out = np.zeros(rows * width, dtype=bool)
            out[index] = True
            return out.reshape(rows, width)

        return st.integers(0, rows * width - 1).map(single)
    if pattern == "interleaved":
        return hnp.arrays(np.bool_, (rows, width))
    leading = pattern == "leading_padding"

    def from_lengths(lengths: list[int]) -> np.ndarray:
        positions = np.arange(width)
        n = np.array(lengths).reshape(rows, 1)
        return positions >= width - n if leading else positions < n

    return st.lists(st.integers(0, width), min_size=rows, max_size=rows).map(from_lengths)


def as_mask(valid: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Boolean validity as a ``dtype`` mask: 1/True at valid positions, 0/False at padding."""
    return torch.from_numpy(np.ascontiguousarray(valid)).to(dtype)


def masks(
    shape: Sequence[int], *, mask_dtype: torch.dtype | None = None
) -> st.SearchStrategy[torch.Tensor]:
    """Padding masks of ``shape`` (valid where ``mask != 0``), last dimension = positions.

    Draws a pattern from :data:`MASK_PATTERNS`: ragged per-row lengths with trailing or
    leading padding, all-valid, all-padding, a single valid entry in the whole mask, or
    interleaved padding; then a dtype (bool, int or float) unless ``mask_dtype`` is given.

    Args:
        shape: tuple of non-negative ints, at least 1-D.
        mask_dtype: fixed mask dtype, or ``None`` to draw one of :data:`MASK_DTYPES`.

    Raises:
        HarnessUsageError: on a bad shape or mask dtype.
    """
    fixed = _check_shape(shape)
    if not fixed:
        raise HarnessUsageError("masks needs a shape with at least one dimension, got ()")
    dtypes_ = mask_dtypes(mask_dtype)
    width = fixed[-1]
    rows = math.prod(fixed[:-1])

    def build(pattern: str) -> st.SearchStrategy[torch.Tensor]:
        return st.tuples(row_masks(rows, width, pattern), dtypes_).map(
            lambda vd: as_mask(vd[0].reshape(fixed), vd[1])
        )

    return st.sampled_from(MASK_PATTERNS).flatmap(build)
