"""What the mutants share: ``aam``'s input validation, so each mutant differs by its one bug.

A mutant that rewrites a term's arithmetic keeps ``aam``'s validation (shapes, devices,
non-finite values at valid positions) by calling :func:`count_inputs`; the bug is then the
arithmetic alone, as it would be in a real patch. Metrics mutants that replace a streaming
class rebuild the one-shot function from it with :func:`fed_once`, as ``aam`` does.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from aam.training.losses import _compute_dtype, _count_inputs

__all__ = ["count_inputs", "fed_once"]


def count_inputs(
    count_pred: Tensor, count_true: Tensor, mask: Tensor
) -> tuple[Tensor, torch.dtype]:
    """``aam``'s count-loss validation; returns the ``[B, A, 1]`` valid mask and compute dtype.

    Raises:
        ValueError: on a shape mismatch, naming both shapes.
        NonFiniteOutputError: on NaN/inf at a valid ASV of the prediction or the truth.
    """
    pred, true, valid = _count_inputs(count_pred, count_true, mask)
    return valid, _compute_dtype(pred, true)


class _Streaming(Protocol):
    def update(self, *args: Any) -> None: ...

    def compute(self) -> dict[str, Any]: ...


def fed_once(state: _Streaming, *args: Any) -> dict[str, Any]:
    """Feed ``state`` one batch and return its result: the one-shot metric."""
    state.update(*args)
    return state.compute()
