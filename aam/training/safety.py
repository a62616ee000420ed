"""Never step on non-finite gradients: the training-loop half of C-WEIGHTS-1.

The loss refuses non-finite outputs at valid positions (:class:`~aam.training.losses.
NonFiniteOutputError`), but a gradient can still overflow in the backward pass of the model
itself. Like AMP's ``GradScaler``, :func:`step_if_finite` checks every gradient with one host
sync and only then calls ``optimizer.step()``; otherwise it skips the step and zeroes the
gradients, so a bad batch never changes the parameters.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> guard = FiniteStepGuard(optimizer)
    >>> model(torch.ones(4, 2)).sum().backward()
    >>> guard.step()
    True
    >>> model(torch.full((4, 2), float("nan"))).sum().backward()
    >>> guard.step(), guard.steps_skipped
    (False, 1)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["FiniteStepGuard", "gradients_are_finite", "step_if_finite"]


def _gradients(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    grads: list[Tensor] = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            # A sparse gradient's finiteness is that of its stored values.
            grads.append(grad.coalesce().values() if grad.is_sparse else grad)
    return grads


def gradients_are_finite(gradients: Iterable[Tensor]) -> bool:
    """Whether every entry of every gradient is finite (no NaN, no ±inf).

    One fused reduction and one host sync per device (one in the usual single-device case):
    per-tensor ``isfinite().all()`` flags are stacked and reduced on the device, and only the
    final flag is read back. Unlike a norm, this cannot overflow for large finite gradients.

    Args:
        gradients: gradient tensors (``None`` entries are not allowed; filter them first).

    Returns:
        ``True`` when all are finite (also for no gradients at all).
    """
    by_device: dict[torch.device, list[Tensor]] = {}
    for grad in gradients:
        by_device.setdefault(grad.device, []).append(grad)
    return all(
        bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        for grads in by_device.values()
    )


def step_if_finite(optimizer: torch.optim.Optimizer, *, zero_grad_on_skip: bool = True) -> bool:
    """Call ``optimizer.step()`` only if every gradient of its parameters is finite.

    Args:
        optimizer: any ``torch.optim.Optimizer``; its gradients must already be computed.
        zero_grad_on_skip: on a skipped step, call ``optimizer.zero_grad()`` so that the bad
            gradients cannot be accumulated into the next step.

    Returns:
        ``True`` if the step was taken, ``False`` if it was skipped.
    """
    if gradients_are_finite(_gradients(optimizer)):
        optimizer.step()
        return True
    if zero_grad_on_skip:
        optimizer.zero_grad()
    return False


class FiniteStepGuard:
    """Wraps an optimizer: :meth:`step` steps only on finite gradients and counts skips.

    Args:
        optimizer: the optimizer to guard.
        zero_grad_on_skip: see :func:`step_if_finite`.

    Attributes:
        steps_taken: number of steps the optimizer took through this guard.
        steps_skipped: number of steps refused because of non-finite gradients.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, zero_grad_on_skip: bool = True) -> None:
        self.optimizer = optimizer
        self.zero_grad_on_skip = zero_grad_on_skip
        self.steps_taken = 0
        self.steps_skipped = 0

    def step(self) -> bool:
        """Step if every gradient is finite; return whether the step was taken."""
        taken = step_if_finite(self.optimizer, zero_grad_on_skip=self.zero_grad_on_skip)
        if taken:
            self.steps_taken += 1
        else:
            self.steps_skipped += 1
        return taken

    def __repr__(self) -> str:
        return (
            f"FiniteStepGuard({type(self.optimizer).__name__}, "
            f"steps_taken={self.steps_taken}, steps_skipped={self.steps_skipped})"
        )
