"""Which terms' code changed: ``gate --changed`` runs only the rules of those terms.

Each term the contract reports rows for (``count_loss``, ``nuc_loss``, ..., the metric families
``regression``, ``classification``, ``count``) gets a *key*: a hash of the source of the
target's code for that term, found with :func:`inspect.getsource`:

* a loss term: the loss class's ``__init__`` and its method for the term
  (``compute_count_loss``, ...; ``forward`` for ``total_loss``; for ``base_loss`` also the
  module's ``compute_pairwise_distances`` and the gathered loss C-DDP-2 checks);
* a metric family: its one-shot function and its streaming class
  (``compute_regression_metrics`` and ``StreamingRegressionMetrics``; ``regression.r2`` is the
  ``regression`` family);

and, followed through the names each of those uses, every function, method or class of the
project's own code that it uses (``self._check`` on the class, a module-level helper such as
``_count_inputs``, base classes; "own" is any module not installed under the interpreter's
library paths, so torch is left out and an editable install is in), so an edit to a shared
helper changes every term that uses it. The constants that code reads (a module-level
``HUBER_DELTA = 1.0``, a class attribute, a dict or tuple of literals) are in the key by
value, so a changed setting reruns the terms that read it.

``--changed`` compares those keys with the ones recorded when the term last passed (state in
``.robustness/changes.json``, written after every gate run that ran all the rules of a term
and found none violated). The recorded key also holds the harness's own source, the target
and metrics specs and the device choice, so an edit to the contract reruns everything; a
pass under a profile counts only for that profile and weaker ones (commit < dev < ci <
thorough). ``--since REV`` compares with the target's code at a git revision instead (the
target's packages materialized as :mod:`robustness.baseline` does for ``--baseline-ref``).

Rows of a term whose key did not change are not run, and the gate says so: "unchanged since
the last pass (...)" or "unchanged since REV", never pass. When nothing changed the gate
prints one line and exits 0. Rows without a term always run.

The gate selects the terms' tests with ``--robustness-terms`` (the pytest plugin
:mod:`robustness.changes_plugin`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import inspect
import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType, MappingProxyType
from typing import Any

from robustness.errors import HarnessUsageError
from robustness.target import LossTarget, MetricsTarget, find_gathered_loss

__all__ = [
    "DEFAULT_STATE",
    "LOSS_TERM_CODE",
    "METRIC_TERM_CODE",
    "PROFILE_STRENGTH",
    "ChangePlan",
    "add_changed_options",
    "plan_changes",
    "record_passes",
    "term_keys",
    "term_of",
]

DEFAULT_STATE = Path(".robustness/changes.json")
STATE_FORMAT = 1
#: A pass under a profile also vouches for the weaker ones.
PROFILE_STRENGTH = {"commit": 0, "dev": 1, "ci": 2, "thorough": 3}
#: The loss class's methods each loss term is computed by (``__init__`` belongs to all).
LOSS_TERM_CODE: dict[str, tuple[str, ...]] = {
    "target_loss": ("compute_target_loss",),
    "count_loss": ("compute_count_loss",),
    "base_loss": ("compute_base_loss",),
    "nuc_loss": ("compute_nucleotide_loss",),
    "total_loss": ("forward",),
}
#: The metrics module's attributes each metric family is computed by.
METRIC_TERM_CODE: dict[str, tuple[str, ...]] = {
    "regression": ("compute_regression_metrics", "StreamingRegressionMetrics"),
    "classification": ("compute_classification_metrics", "StreamingClassificationMetrics"),
    "count": ("compute_count_metrics", "StreamingCountMetrics"),
}
_HARNESS_ROOT = Path(__file__).parent
#: How far the closure over called names is followed (helpers of helpers of ...).
_MAX_DEPTH = 8


def term_of(term: str) -> str:
    """The code key a row's term is checked under: ``regression.r2`` -> ``regression``."""
    return term.partition(".")[0]


# --------------------------------------------------------------------------- keys


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        # No source (a builtin, a C extension): its identity stands in for it.
        return f"<no source: {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}>"


_SCALARS = (bool, int, float, complex, str, bytes)


def _data_repr(value: Any) -> str | None:
    """A stable text of a module-level or class-level constant, or ``None`` if it is not one.

    Constants are the literal kinds a loss reads as settings (``HUBER_DELTA = 1.0``, a block
    size, a dict of keys): numbers, strings, and tuples, lists, sets and dicts of them (with
    ``None`` inside). Sets are written sorted: their order follows string hashing, which
    changes per process.
    """
    if isinstance(value, _SCALARS):
        return repr(value)
    if isinstance(value, tuple | list | set | frozenset):
        items = [_item_repr(v) for v in value]
        if any(item is None for item in items):
            return None
        texts = [item for item in items if item is not None]
        if isinstance(value, set | frozenset):
            return f"set({', '.join(sorted(texts))})"
        return f"{type(value).__name__}({', '.join(texts)})"
    if isinstance(value, dict | MappingProxyType):
        pairs = [(_item_repr(k), _item_repr(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "dict(" + ", ".join(f"{k}: {v}" for k, v in pairs) + ")"
    return None


def _item_repr(value: Any) -> str | None:
    return "None" if value is None else _data_repr(value)


def _code_names(obj: Any) -> set[str]:
    """Every global or attribute name the functions of ``obj`` (a function or class) use."""
    names: set[str] = set()
    functions: list[Any] = []
    if inspect.isclass(obj):
        functions += [v for v in vars(obj).values() if isinstance(v, FunctionType)]
        functions += [
            v.__func__ for v in vars(obj).values() if isinstance(v, staticmethod | classmethod)
        ]
        functions += [
            f for v in vars(obj).values() if isinstance(v, property) for f in (v.fget, v.fset)
        ]
    elif isinstance(obj, FunctionType):
        functions.append(obj)
    stack = [f.__code__ for f in functions if isinstance(f, FunctionType)]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack += [c for c in code.co_consts if inspect.iscode(c)]
    return names


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(sorted(str(Path(r).resolve()) for r in roots))


def _own(obj: Any) -> bool:
    """Whether ``obj`` is the project's code (not the standard library's or an installed one's).

    The target's code is whatever is not installed under the interpreter's library paths: an
    editable install or a checkout on ``sys.path`` is the project's, torch is not.
    """
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    filename = getattr(module, "__file__", None)
    if not filename:
        return False
    resolved = str(Path(filename).resolve())
    return not resolved.startswith(_library_roots())


def _closure(
    roots: Mapping[str, Any], cls: type[Any] | None, sources: dict[int, str]
) -> dict[str, str]:
    """Name -> source of ``roots`` and of the project's code they use, transitively.

    Followed: the module-level names a function or class body uses, methods reached through
    ``self.name`` on ``cls``, and the base classes of a class. Constants they read (see
    :func:`_data_repr`) are part of the key by value: a changed ``HUBER_DELTA`` moves the
    terms that use it.

    ``sources`` caches each object's source across the terms of one :func:`term_keys` call:
    every loss term reaches ``__init__`` and the shared helpers, and :func:`inspect.getsource`
    parses a class's whole module each time (aam's keys: 205 look-ups in 0.52 s at the end of
    every gate run, 81 in 0.21 s with the cache).
    """
    found: dict[str, str] = {}
    todo: list[tuple[Any, int]] = [(obj, 0) for obj in roots.values()]
    seen: set[int] = set()
    while todo:
        obj, depth = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if id(obj) not in sources:
            sources[id(obj)] = _source(obj)
        found[f"{obj.__module__}.{obj.__qualname__}"] = sources[id(obj)]
        if depth >= _MAX_DEPTH:
            continue
        module = inspect.getmodule(obj)
        scope: dict[str, Any] = dict(vars(module)) if module is not None else {}
        candidates: list[Any] = list(obj.__mro__[1:]) if inspect.isclass(obj) else []
        for used in sorted(_code_names(obj)):
            value = scope.get(used)
            candidates.append(value)
            # Dunders (__file__, __name__) are where the code is, not what it computes.
            constant = None if used.startswith("__") else _data_repr(value)
            if constant is not None:
                found[f"{scope['__name__']}.{used}"] = f"= {constant}"
            if cls is not None:
                attribute = inspect.getattr_static(cls, used, None)
                candidates.append(attribute)
                constant = None if used.startswith("__") else _data_repr(attribute)
                if constant is not None:
                    found[f"{cls.__module__}.{cls.__qualname__}.{used}"] = f"= {constant}"
        for candidate in candidates:
            if isinstance(candidate, staticmethod | classmethod):
                candidate = candidate.__func__
            if (isinstance(candidate, FunctionType) or inspect.isclass(candidate)) and _own(
                candidate
            ):
                todo.append((candidate, depth + 1))
    return found


def _digest(parts: Mapping[str, str], rename: Mapping[str, str]) -> str:
    hasher = hashlib.sha256()
    for name in sorted(parts):
        text = f"{name}\n{parts[name]}"
        for new, old in rename.items():
            text = text.replace(new, old)
        hasher.update(text.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


def _loss_roots(loss: LossTarget) -> dict[str, dict[str, Any]]:
    cls = loss.loss_cls
    roots: dict[str, dict[str, Any]] = {}
    for term, methods in LOSS_TERM_CODE.items():
        objs = {"__init__": cls.__init__}
        objs.update({m: getattr(cls, m) for m in methods})
        roots[term] = objs
    roots["base_loss"]["compute_pairwise_distances"] = loss.pairwise_distances
    with contextlib.suppress(Exception):  # the gathered loss is an optional part of a target
        spec, _ = find_gathered_loss(loss)
        if spec is not None:
            module_name, _, attr = spec.partition(":")
            module = __import__(module_name, fromlist=[attr])
            roots["base_loss"][spec] = getattr(module, attr)
    return roots


def term_keys(
    loss: LossTarget, metrics: MetricsTarget, *, rename: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Term -> hash of the source of the target's code for it (see the module docstring).

    Args:
        loss: the loss target.
        metrics: the metrics target.
        rename: materialized package name -> original name, undone in the source before
            hashing (so code at a revision hashes like the same code in the working tree).
    """
    rename = dict(rename or {})
    keys: dict[str, str] = {}
    sources: dict[int, str] = {}  # id -> source; the objects stay alive for the whole call
    for term, roots in _loss_roots(loss).items():
        keys[term] = _digest(_closure(roots, loss.loss_cls, sources), rename)
    module = metrics.module
    if module is None:  # --metrics none: a loss-only project has no metric terms
        return keys
    for term, names in METRIC_TERM_CODE.items():
        roots = {name: getattr(module, name) for name in names}
        keys[term] = _digest(_closure(roots, None, sources), rename)
    return keys


def harness_key() -> str:
    """A hash of the harness's own source (everything under ``robustness/`` but the mutants)."""
    hasher = hashlib.sha256()
    for path in sorted(_HARNESS_ROOT.rglob("*.py")):
        relative = path.relative_to(_HARNESS_ROOT)
        if relative.parts[0] == "mutants":
            continue
        hasher.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()[:16]


# --------------------------------------------------------------------------- plan


@dataclass
class ChangePlan:
    """What ``--changed`` runs and what it leaves out.

    Attributes:
        run: terms whose code changed (their rules run).
        unchanged: term -> since when it is unchanged (``"the last pass (dev, 2026-...)"``,
            or the revision).
        keys: term -> the key recorded if it passes now.
    """

    run: list[str]
    unchanged: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """One line per group of unchanged terms, for the gate's report."""
        since: dict[str, list[str]] = {}
        for term, when in self.unchanged.items():
            since.setdefault(when, []).append(term)
        return [f"  unchanged since {when}: {', '.join(terms)}" for when, terms in since.items()]

    def nothing_line(self) -> str:
        """The one line printed when nothing changed."""
        whens = sorted(set(self.unchanged.values()))
        return (
            f"robustness gate: nothing changed — every term unchanged since {'; '.join(whens)}; "
            "no rules run"
        )


def _state_scope(loss: LossTarget, metrics: MetricsTarget, device: str) -> str:
    return f"{loss.spec}|{metrics.spec}|{device}|{harness_key()}"


def _read_state(path: Path) -> dict[str, Any]:
    """The recorded passes (an empty record where there is none or it has an older format)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "terms": {}}
    except (OSError, ValueError) as exc:
        raise HarnessUsageError(
            f"--changed: cannot read the state file {str(path)!r} ({exc}); delete it to start over"
        ) from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        return {"format": STATE_FORMAT, "terms": {}}  # an older format: start over
    data.setdefault("terms", {})
    return data


def _keyed(keys: Mapping[str, str], scope: str) -> dict[str, str]:
    return {
        term: hashlib.sha256(f"{scope}|{key}".encode()).hexdigest()[:16]
        for term, key in keys.items()
    }


def plan_changes(
    loss: LossTarget,
    metrics: MetricsTarget,
    *,
    profile: str,
    device: str,
    state: Path = DEFAULT_STATE,
    since: str | None = None,
) -> ChangePlan:
    """Which terms to run: changed since their last pass under ``profile``, or since ``since``.

    Raises:
        HarnessUsageError: for an unreadable state file, or a revision (or a target module at
            it) that does not exist (one line).
    """
    current = term_keys(loss, metrics)
    keyed = _keyed(current, _state_scope(loss, metrics, device))
    if since is not None:
        before = _keys_at(since, loss, metrics)
        run = [t for t in current if before.get(t) != current[t]]
        unchanged = {t: since for t in current if t not in run}
        return ChangePlan(run, unchanged, keyed)
    recorded = _read_state(state)["terms"]
    run, unchanged = [], {}
    strength = PROFILE_STRENGTH.get(profile, len(PROFILE_STRENGTH))
    for term, key in keyed.items():
        entry = recorded.get(term)
        if (
            isinstance(entry, dict)
            and entry.get("key") == key
            and PROFILE_STRENGTH.get(str(entry.get("profile")), -1) >= strength
        ):
            unchanged[term] = f"the last pass ({entry.get('profile')}, {entry.get('at')})"
        else:
            run.append(term)
    return ChangePlan(run, unchanged, keyed)


def _keys_at(ref: str, loss: LossTarget, metrics: MetricsTarget) -> dict[str, str]:
    from robustness.baseline import materialized
    from robustness.target import load_loss_target, load_metrics_target

    modules = [loss.spec.partition(":")[0], metrics.spec]
    try:
        with materialized(ref, modules) as at:
            old_loss = load_loss_target(at.spec(loss.spec))
            old_metrics = load_metrics_target(at.spec(metrics.spec))
            return term_keys(
                old_loss, old_metrics, rename={new: old for old, new in at.packages.items()}
            )
    except HarnessUsageError as exc:
        raise HarnessUsageError(str(exc).replace("--baseline-ref", "--since")) from None


def record_passes(
    plan: ChangePlan | None,
    loss: LossTarget,
    metrics: MetricsTarget,
    rows: Iterable[Mapping[str, Any]],
    *,
    profile: str,
    device: str,
    state: Path = DEFAULT_STATE,
) -> None:
    """Record each term whose rows all held (none failed, at least one ran) as passed now.

    Call only after a run that ran every rule of the terms it ran (no ``--rules``). A term
    with a failing row loses its record, so the next ``--changed`` runs it again.
    """
    keyed = (
        plan.keys
        if plan is not None
        else _keyed(term_keys(loss, metrics), _state_scope(loss, metrics, device))
    )
    statuses: dict[str, set[str]] = {}
    for row in rows:
        statuses.setdefault(term_of(str(row["term"])), set()).add(str(row["status"]))
    try:
        data = _read_state(state)
    except HarnessUsageError:
        data = {"format": STATE_FORMAT, "terms": {}}  # unreadable: this run starts it over
    recorded: dict[str, Any] = data["terms"]
    at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    for term, seen in statuses.items():
        if term not in keyed:
            continue
        if "FAIL" in seen:
            recorded.pop(term, None)
        elif "pass" in seen:
            recorded[term] = {"key": keyed[term], "profile": profile, "at": at}
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_suffix(f".{os.getpid()}.tmp")  # concurrent gates: no shared temp
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, state)
    except OSError as exc:
        # The verdict stands without the record; the next --changed then runs these terms.
        print(f"robustness gate: could not record passes in {str(state)!r}: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- options


def add_changed_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--changed``, ``--since REV`` and ``--state PATH`` to the gate's parser."""
    group = parser.add_argument_group(
        "changed terms only", "run only the rules of terms whose code changed (robustness.changes)"
    )
    group.add_argument(
        "--changed",
        action="store_true",
        help="run only the terms whose code changed since their last pass (or --since REV); "
        "exit 0 with one line when nothing changed",
    )
    group.add_argument(
        "--since",
        default=None,
        metavar="REV",
        help="with --changed: compare with the target's code at this git revision instead",
    )
    group.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        metavar="PATH",
        help=f"where passes are recorded (default: {DEFAULT_STATE})",
    )


def check_changed_options(options: argparse.Namespace) -> None:
    """Reject option combinations that make no sense (one line).

    Raises:
        HarnessUsageError: ``--since`` without ``--changed``, or ``--changed`` with ``--rules``.
    """
    if options.since is not None and not options.changed:
        raise HarnessUsageError("--since REV needs --changed (gate --changed --since REV)")
    if options.changed and options.rules:
        raise HarnessUsageError("--changed selects rules by term; drop --rules (or drop --changed)")


def serial_is_faster(terms: Sequence[str], *, profile: str = "dev") -> bool:
    """Whether so few terms run that the gate should not start xdist workers.

    Each worker pays a torch import and a collection (about 2.5 s of CPU, see
    docs/gate-speed.md) before it runs a test. An edit to one loss term reruns that term and
    ``total_loss``: under ``commit`` that took 7.1 s of CPU serially against 15.2 s with 2
    workers (10.2 s wall against 17.7, 2 loaded cores), so the hook's usual case runs serially.
    Under ``dev`` the same two terms took 12.4 s of CPU serially and 19.7 s with 2 workers,
    about even in wall time on 2 quiet cores, so only one term runs serially there.
    """
    if profile == "commit":
        return len([term for term in terms if term != "total_loss"]) <= 1
    return len(terms) <= 1
