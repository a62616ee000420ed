"""Load the implementation under test from an import path, and say clearly when it can't be.

A *loss target* is ``"module:Class"``: a ``MultiTaskLoss``-like ``nn.Module`` class, with a
module-level ``compute_pairwise_distances`` beside it. A *metrics target* is a module with the
one-shot functions and streaming classes of ``aam.training.metrics``. Both default to the
built-in ``aam`` implementation; environment variables name them for tools that cannot pass
pytest options.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from robustness.errors import InvalidTargetError

__all__ = [
    "DEFAULT_GATHERED_LOSS",
    "DEFAULT_LOSS_TARGET",
    "DEFAULT_METRICS_TARGET",
    "GATHERED_LOSS_ENV",
    "LOSS_METHODS",
    "LOSS_TARGET_ENV",
    "METRICS_ATTRIBUTES",
    "METRICS_TARGET_ENV",
    "LossTarget",
    "MetricsTarget",
    "find_gathered_loss",
    "load_loss_target",
    "load_metrics_target",
]

DEFAULT_LOSS_TARGET = "aam.training.losses:MultiTaskLoss"
DEFAULT_METRICS_TARGET = "aam.training.metrics"
LOSS_TARGET_ENV = "ROBUSTNESS_TARGET"
METRICS_TARGET_ENV = "ROBUSTNESS_METRICS"
#: The gathered (cross-rank) UniFrac loss checked by C-DDP-2, as ``module:function``.
GATHERED_LOSS_ENV = "ROBUSTNESS_GATHERED_LOSS"
DEFAULT_GATHERED_LOSS = "aam.training.distributed:gathered_base_loss"

LOSS_METHODS = (
    "compute_target_loss",
    "compute_count_loss",
    "compute_base_loss",
    "compute_nucleotide_loss",
    "forward",
)
METRICS_ATTRIBUTES = (
    "compute_regression_metrics",
    "compute_classification_metrics",
    "compute_count_metrics",
    "StreamingRegressionMetrics",
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
)
_STREAMING_METHODS = ("update", "compute", "merge", "reset")


@dataclass(frozen=True)
class LossTarget:
    """A loss implementation under test.

    Attributes:
        spec: the import path it was loaded from (``"module:Class"``).
        loss_cls: the loss class; ``loss_cls(**kwargs)`` takes ``MultiTaskLoss``'s arguments.
        pairwise_distances: the module's ``compute_pairwise_distances``.
    """

    spec: str
    loss_cls: type[Any]
    pairwise_distances: Callable[[Any], Any]

    def make(self, **kwargs: Any) -> Any:
        """Construct the loss with ``MultiTaskLoss``'s keyword arguments."""
        return self.loss_cls(**kwargs)


@dataclass(frozen=True)
class MetricsTarget:
    """A metrics module under test; attributes are looked up on :attr:`module`."""

    spec: str
    module: ModuleType

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def _import(module_name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's target, not us
        raise InvalidTargetError(
            f"{what} {module_name!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc


def load_loss_target(spec: str | None = None) -> LossTarget:
    """Load a loss target from ``"module:Class"`` (default: $ROBUSTNESS_TARGET, then aam).

    Raises:
        InvalidTargetError: with one line saying what is wrong and what was expected.
    """
    spec = spec or os.environ.get(LOSS_TARGET_ENV) or DEFAULT_LOSS_TARGET
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidTargetError(
            f"loss target {spec!r} must be 'module:Class', e.g. {DEFAULT_LOSS_TARGET!r}"
        )
    module = _import(module_name, "loss target module")
    loss_cls = getattr(module, attr, None)
    if loss_cls is None:
        raise InvalidTargetError(f"loss target module {module_name!r} has no attribute {attr!r}")
    if not inspect.isclass(loss_cls):
        raise InvalidTargetError(
            f"loss target {spec!r} is a {type(loss_cls).__name__}, expected a class"
        )
    missing = [name for name in LOSS_METHODS if not callable(getattr(loss_cls, name, None))]
    if missing:
        raise InvalidTargetError(
            f"loss target {spec!r} lacks required method(s) {', '.join(missing)}"
        )
    pairwise = getattr(module, "compute_pairwise_distances", None)
    if not callable(pairwise):
        raise InvalidTargetError(
            f"loss target module {module_name!r} lacks a module-level "
            "compute_pairwise_distances(embeddings)"
        )
    return LossTarget(spec=spec, loss_cls=loss_cls, pairwise_distances=pairwise)


def load_metrics_target(spec: str | None = None) -> MetricsTarget:
    """Load a metrics target module (default: $ROBUSTNESS_METRICS, then aam).

    Raises:
        InvalidTargetError: with one line saying what is wrong and what was expected.
    """
    spec = spec or os.environ.get(METRICS_TARGET_ENV) or DEFAULT_METRICS_TARGET
    if ":" in spec:
        raise InvalidTargetError(
            f"metrics target {spec!r} must be a module path, e.g. {DEFAULT_METRICS_TARGET!r}"
        )
    module = _import(spec, "metrics target module")
    missing = [name for name in METRICS_ATTRIBUTES if not hasattr(module, name)]
    if missing:
        raise InvalidTargetError(f"metrics target {spec!r} lacks {', '.join(missing)}")
    for name in METRICS_ATTRIBUTES:
        obj = getattr(module, name)
        if name.startswith("Streaming"):
            lacking = [m for m in _STREAMING_METHODS if not callable(getattr(obj, m, None))]
            if not inspect.isclass(obj) or lacking:
                raise InvalidTargetError(
                    f"metrics target {spec!r}: {name} must be a class with "
                    f"{', '.join(_STREAMING_METHODS)} (missing: {', '.join(lacking) or 'class'})"
                )
        elif not callable(obj):
            raise InvalidTargetError(f"metrics target {spec!r}: {name} is not callable")
    return MetricsTarget(spec=spec, module=module)


def find_gathered_loss(loss: LossTarget) -> tuple[str | None, str]:
    """The gathered UniFrac loss to check with ``loss`` (C-DDP-2), an optional part of a target.

    Looked up in order: ``$ROBUSTNESS_GATHERED_LOSS`` (``module:function``); a
    ``gathered_base_loss`` function beside the loss class; aam's own when ``loss`` is the
    default aam target. A target that provides none is not an error: C-DDP-2 is skipped.

    Returns:
        ``(spec, how it was found)``, or ``(None, why none was found)``.

    Raises:
        InvalidTargetError: if ``$ROBUSTNESS_GATHERED_LOSS`` names nothing callable.
    """
    named = os.environ.get(GATHERED_LOSS_ENV)
    if named:
        module_name, sep, attr = named.partition(":")
        if not sep or not module_name or not attr or "." in attr:
            raise InvalidTargetError(
                f"{GATHERED_LOSS_ENV}={named!r} must be 'module:function', e.g. "
                f"{DEFAULT_GATHERED_LOSS!r}"
            )
        if not callable(getattr(_import(module_name, "gathered loss module"), attr, None)):
            raise InvalidTargetError(f"{GATHERED_LOSS_ENV}={named!r} is not a callable")
        return named, f"${GATHERED_LOSS_ENV}"
    module_name = loss.spec.partition(":")[0]
    beside = getattr(importlib.import_module(module_name), "gathered_base_loss", None)
    if callable(beside):
        return f"{module_name}:gathered_base_loss", f"gathered_base_loss beside {loss.spec}"
    if loss.spec == DEFAULT_LOSS_TARGET:
        return DEFAULT_GATHERED_LOSS, "aam's own (the default loss target)"
    return None, (
        f"loss target {loss.spec!r} provides no gathered loss: define gathered_base_loss("
        f"embeddings, sample_ids, distances, *, group=None) beside the loss class or set "
        f"{GATHERED_LOSS_ENV}=module:function"
    )
