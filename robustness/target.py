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

from robustness.errors import HarnessUsageError, InvalidTargetError

__all__ = [
    "DEFAULT_GATHERED_LOSS",
    "DEFAULT_LOSS_TARGET",
    "DEFAULT_METRICS_TARGET",
    "GATHERED_LOSS_ENV",
    "LOSS_KWARGS",
    "LOSS_METHODS",
    "LOSS_TARGET_ENV",
    "METRICS_ATTRIBUTES",
    "METRICS_TARGET_ENV",
    "NO_METRICS",
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
#: The keyword arguments the contract constructs a loss with (``MultiTaskLoss``'s).
LOSS_KWARGS = (
    "penalty",
    "nuc_penalty",
    "class_weights",
    "target_penalty",
    "count_penalty",
    "target_loss_type",
)
#: How the contract calls each method (after ``self``): positional names, then keywords.
_METHOD_CALLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "compute_target_loss": (("target_prediction", "target", "is_classifier"), ()),
    "compute_count_loss": (("count_prediction", "counts", "mask"), ()),
    "compute_base_loss": (("base_prediction", "base_target", "encoder_type"), ()),
    "compute_nucleotide_loss": (("nuc_predictions", "nucleotides", "nuc_mask"), ()),
    "forward": (("outputs", "targets"), ("is_classifier", "encoder_type")),
}


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
    #: ``module:function`` of the gathered loss from the project configuration, if any.
    gathered_loss: str | None = None

    def make(self, **kwargs: Any) -> Any:
        """Construct the loss with ``MultiTaskLoss``'s keyword arguments."""
        return self.loss_cls(**kwargs)


@dataclass(frozen=True)
class MetricsTarget:
    """A metrics module under test; attributes are looked up on :attr:`module`.

    ``module`` is ``None`` for ``--metrics none`` (a loss-only project): the metric rules
    are then deselected, and any attribute access is a usage error.
    """

    spec: str
    module: ModuleType | None

    @property
    def enabled(self) -> bool:
        """Whether there is a metrics module to check (not ``--metrics none``)."""
        return self.module is not None

    def __getattr__(self, name: str) -> Any:
        if self.module is None:
            raise HarnessUsageError(
                f"no metrics target (--metrics none): {name!r} is not available"
            )
        return getattr(self.module, name)


#: The metrics target of a loss-only project (``--metrics none``, ``metrics = false``).
NO_METRICS = MetricsTarget(spec="none", module=None)


def _import(module_name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except HarnessUsageError:
        raise  # the module itself explains what is missing (e.g. an optional extra)
    except ModuleNotFoundError as exc:
        hint = ""
        if exc.name and module_name.split(".")[0] == exc.name.split(".")[0]:
            hint = (
                f" (searched sys.path from {os.getcwd()}: install the package with "
                "'pip install -e .', or run 'python -m pytest' / 'python -m robustness' "
                "from the directory that holds it)"
            )
        raise InvalidTargetError(
            f"{what} {module_name!r} cannot be imported: ModuleNotFoundError: {exc}{hint}"
        ) from exc
    except Exception as exc:  # any import-time failure is the user's target, not us
        raise InvalidTargetError(
            f"{what} {module_name!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # builtins and C extensions: nothing to check
        return None


def _check_constructor(spec: str, loss_cls: type[Any]) -> None:
    """``loss_cls(**kwargs)`` must take every one of :data:`LOSS_KWARGS` and need nothing else."""
    sig = _signature(loss_cls)
    if sig is None:
        return
    params = list(sig.parameters.values())
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    by_name = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    missing = [] if takes_any else [k for k in LOSS_KWARGS if k not in by_name]
    required = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if missing or required:
        problems = []
        if missing:
            problems.append(f"does not take {', '.join(missing)}")
        if required:
            problems.append(f"requires {', '.join(required)}")
        raise InvalidTargetError(
            f"loss target {spec!r}: constructor {loss_cls.__name__}{sig} "
            f"{' and '.join(problems)}; expected keyword arguments with defaults: "
            f"{', '.join(LOSS_KWARGS)} (wrap it with robustness.adapters.adapt_loss)"
        )


def _check_method(spec: str, loss_cls: type[Any], name: str) -> None:
    """``loss_cls.name`` must accept the call the contract makes (see ``_METHOD_CALLS``)."""
    sig = _signature(getattr(loss_cls, name))
    if sig is None:
        return
    positional, keywords = _METHOD_CALLS[name]
    try:
        sig.bind(None, *positional, **dict.fromkeys(keywords))
    except TypeError as exc:
        call = ", ".join(["self", *positional, *(f"{k}=..." for k in keywords)])
        raise InvalidTargetError(
            f"loss target {spec!r}: {name}{sig} cannot be called as {name}({call}): {exc}"
        ) from None


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
    _check_constructor(spec, loss_cls)
    for name in LOSS_METHODS:
        _check_method(spec, loss_cls, name)
    pairwise = getattr(module, "compute_pairwise_distances", None)
    if not callable(pairwise):
        raise InvalidTargetError(
            f"loss target module {module_name!r} lacks a module-level "
            "compute_pairwise_distances(embeddings)"
        )
    return LossTarget(spec=spec, loss_cls=loss_cls, pairwise_distances=pairwise)


def load_metrics_target(spec: str | None = None, *, allow_none: bool = False) -> MetricsTarget:
    """Load a metrics target module (default: $ROBUSTNESS_METRICS, then aam).

    Args:
        spec: a module path; with ``allow_none``, ``"none"`` gives :data:`NO_METRICS`.
        allow_none: accept ``"none"`` (a loss-only run) instead of treating it as a module.

    Raises:
        InvalidTargetError: with one line saying what is wrong and what was expected.
    """
    spec = spec or os.environ.get(METRICS_TARGET_ENV) or DEFAULT_METRICS_TARGET
    if spec.strip().lower() == NO_METRICS.spec:
        if allow_none:
            return NO_METRICS
        raise InvalidTargetError("no metrics target (--metrics none) where one is required")
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

    Looked up in order: ``$ROBUSTNESS_GATHERED_LOSS`` (``module:function``), then the
    project configuration's ``gathered_loss`` (:attr:`LossTarget.gathered_loss`); a
    ``gathered_base_loss`` function beside the loss class; aam's own when ``loss`` is the
    default aam target. A target that provides none is not an error: C-DDP-2 is skipped.

    Returns:
        ``(spec, how it was found)``, or ``(None, why none was found)``.

    Raises:
        InvalidTargetError: if ``$ROBUSTNESS_GATHERED_LOSS`` names nothing callable.
    """
    from_env = os.environ.get(GATHERED_LOSS_ENV)
    named = from_env or loss.gathered_loss
    if named:
        source = f"${GATHERED_LOSS_ENV}" if from_env else "gathered_loss in [tool.robustness]"
        module_name, sep, attr = named.partition(":")
        if not sep or not module_name or not attr or "." in attr:
            raise InvalidTargetError(
                f"{source} = {named!r} must be 'module:function', e.g. {DEFAULT_GATHERED_LOSS!r}"
            )
        if not callable(getattr(_import(module_name, "gathered loss module"), attr, None)):
            raise InvalidTargetError(f"{source} = {named!r} is not a callable")
        return named, source
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
