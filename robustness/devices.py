"""Which devices a check runs on, and why one is skipped.

Every device-dependent test is parametrized over :func:`device_params`: cpu always, cuda as a
parameter that is *skipped with a reason* where no GPU exists, never silently dropped or passed.
"""

from __future__ import annotations

import pytest

from robustness.errors import HarnessUsageError

__all__ = ["DEVICE_CHOICES", "cuda_skip_reason", "device_params"]

DEVICE_CHOICES = ("cpu", "cuda", "all")


def cuda_skip_reason() -> str | None:
    """Return why cuda checks cannot run here, or ``None`` when they can."""
    # Imported here: the pytest plugin imports this module in every session of every
    # project that installs the package, most of which never parametrize over devices.
    import torch

    if not torch.backends.cuda.is_built():  # type: ignore[no-untyped-call]
        return f"cuda not available: torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "cuda not available: torch.cuda.is_available() is False (no GPU or driver)"
    return None


def device_params(choice: str = "all") -> list[object]:
    """``pytest.param`` objects for the devices ``choice`` selects (``cpu``, ``cuda``, ``all``).

    Raises:
        HarnessUsageError: if ``choice`` is not one of :data:`DEVICE_CHOICES`.
    """
    if choice not in DEVICE_CHOICES:
        raise HarnessUsageError(
            f"device must be one of {', '.join(DEVICE_CHOICES)}, got {choice!r}"
        )
    params: list[object] = []
    if choice in ("cpu", "all"):
        params.append(pytest.param("cpu", id="cpu"))
    if choice in ("cuda", "all"):
        reason = cuda_skip_reason()
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param("cuda", id="cuda", marks=marks))
    return params
