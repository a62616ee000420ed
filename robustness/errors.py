"""The harness's two exception families, and what a violation carries so it can be replayed.

* :class:`HarnessUsageError` (a ``ValueError``): the harness was misused — a target that cannot
  be imported, a strategy argument out of range, a bad option. Fix the call, not the code under
  test.
* :class:`ContractViolation` (an ``AssertionError``, so pytest reports a *failure*): the code
  under test broke a rule of the contract. It carries the rule id, the term or metric, a
  readable description of the (shrunk) input, and a :class:`ReplaySpec` from which the gate
  writes a repro file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ContractViolation",
    "HarnessUsageError",
    "InvalidTargetError",
    "ReplaySpec",
    "from_plain",
    "qualified_name",
    "resolve_qualified_name",
    "to_plain",
]


class HarnessUsageError(ValueError):
    """The harness itself was called wrongly (bad option, bad strategy argument, bad target)."""


class InvalidTargetError(HarnessUsageError):
    """A target implementation cannot be imported or lacks the required interface."""


def qualified_name(obj: Any) -> str:
    """Return ``"module:qualname"`` for a module-level function or class."""
    return f"{obj.__module__}:{obj.__qualname__}"


def resolve_qualified_name(name: str) -> Any:
    """Import the object named ``"module:qualname"``.

    Raises:
        HarnessUsageError: if the name is malformed or does not resolve.
    """
    module_name, sep, attr_path = name.partition(":")
    if not sep or not module_name or not attr_path:
        raise HarnessUsageError(f"expected 'module:attribute', got {name!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HarnessUsageError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HarnessUsageError(f"{module_name!r} has no attribute {attr_path!r}") from None
    return obj


_PLAIN_TAG = "__plain__"


def to_plain(value: Any) -> Any:
    """Turn a value into data that ``torch.load(..., weights_only=True)`` accepts.

    Tensors, numbers, strings, bools and ``None`` pass through; lists, tuples and dicts are
    converted element-wise; ``torch.dtype`` becomes its name; an object with ``to_plain()``
    becomes ``{"__plain__": "module:Class", "data": obj.to_plain()}`` and is rebuilt by
    :func:`from_plain` through ``Class.from_plain(data)``.

    Raises:
        HarnessUsageError: for anything else (it could not be replayed safely).
    """
    import torch

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, torch.dtype):
        return {_PLAIN_TAG: "torch.dtype", "data": str(value).removeprefix("torch.")}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if hasattr(value, "to_plain"):
        return {_PLAIN_TAG: qualified_name(type(value)), "data": value.to_plain()}
    raise HarnessUsageError(
        f"cannot store a {type(value).__name__} in a repro file; give it to_plain()/from_plain()"
    )


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    import torch

    if isinstance(value, dict):
        tag = value.get(_PLAIN_TAG)
        if tag == "torch.dtype":
            dtype = getattr(torch, value["data"])
            assert isinstance(dtype, torch.dtype)
            return dtype
        if tag is not None:
            cls = resolve_qualified_name(tag)
            return cls.from_plain(value["data"])
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ReplaySpec:
    """How to re-run one check: ``resolve_qualified_name(check)(target, **from_plain(args))``.

    ``check`` names a module-level check function (``"module:qualname"``); ``args`` holds its
    keyword arguments as plain data (see :func:`to_plain`). ``kind`` says which target the
    check takes first: ``"loss"`` or ``"metrics"``.
    """

    check: str
    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, check: Callable[..., Any], kind: str, **args: Any) -> ReplaySpec:
        """Build a spec for ``check`` called with ``args`` (converted to plain data)."""
        return cls(qualified_name(check), kind, to_plain(args))


class ContractViolation(AssertionError):
    """A rule of the contract does not hold for the implementation under test.

    Args:
        rule: the contract rule id, e.g. ``"C-MASK-1"``.
        term: the loss term or metric, e.g. ``"count_loss"`` or ``"r2"``.
        headline: one sentence saying what went wrong.
        details: ordered ``label -> text`` lines describing the input (shapes, dtype, device,
            offending positions and values, tolerance).
        replay: how to re-run the check; the pytest plugin writes it to a repro file.
    """

    def __init__(
        self,
        rule: str,
        term: str,
        headline: str,
        *,
        details: Mapping[str, object] | None = None,
        replay: ReplaySpec | None = None,
    ) -> None:
        self.rule = rule
        self.term = term
        self.headline = headline
        self.details: dict[str, str] = {k: str(v) for k, v in (details or {}).items()}
        self.replay = replay
        self.repro_path: str | None = None
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"[{self.rule}] {self.term}: {self.headline}"]
        width = max((len(k) for k in self.details), default=0)
        for label, text in self.details.items():
            pad = " " * (width + 4)
            body = text.replace("\n", "\n" + pad)
            lines.append(f"  {label.ljust(width)}  {body}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep rule/term/details across process boundaries (pytest-xdist pickles reports).
        return (
            _rebuild_violation,
            (self.rule, self.term, self.headline, self.details, self.replay),
        )


def _rebuild_violation(
    rule: str,
    term: str,
    headline: str,
    details: dict[str, str],
    replay: ReplaySpec | None,
) -> ContractViolation:
    return ContractViolation(rule, term, headline, details=details, replay=replay)
