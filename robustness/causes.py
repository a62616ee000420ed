"""Root causes: group the gate's failing rule × term rows by what made them fail.

One bug usually fails many rows: a head that raises fails every rule of its term and of the
total. The gate prints one finding per cause instead of one per row. Two failures share a cause
when

* both carry an exception (a ``ContractViolation``'s ``exception`` or ``error`` detail, or the
  test's own crash) of the same type whose message has the same *shape*: numbers, shapes,
  positions and addresses normalized away (:func:`message_shape`), whatever rule or term it
  failed; or
* neither does, and they violate the same property (rule and headline shape) on the same term;
  a ``total_loss`` row that violates a rule the way one of its terms does (the same headline
  with the term's name in it) joins that term's cause: the total only inherits the bug.

A row with several failing tests takes the cause of its first one, so every failing row is in
exactly one cause. Summaries are built from normalized text only, so the same bug gives the
same summary on every run and any input (the known-violations file, :mod:`robustness.known`,
matches on it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Cause", "FailureLike", "cause_of", "group_causes", "message_shape", "render_causes"]

#: The longest message shape a summary quotes before it is cut with "...".
SUMMARY_WIDTH = 90

_HEADLINE = re.compile(r"^\[(?P<rule>[^\]]+)\] (?P<term>[^:]+): (?P<headline>.*)$")
_DETAIL = re.compile(r"^  (?P<label>\S(?:.*?\S)?)  +(?P<text>.*)$")
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Warning|Exit|Interrupt)): ?")
_EXCEPTION_LABELS = ("exception", "error")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
# A number not inside a name (float32, C-MASK-1), its sign included: -100 and 7 are both ids.
_NUMBER = re.compile(r"(?<![\w.\-])[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?!\w)")
_SEQUENCE = re.compile(r"([(\[])#(?:, #)*,?([)\]])")


class FailureLike(Protocol):
    """What grouping reads of one failed test (the gate's ``TestOutcome`` has it)."""

    rule: str
    term: str
    message: str


@dataclass
class Cause:
    """One root cause and the failing rows it explains.

    Attributes:
        key: what groups failures (exception type and message shape, or rule, term and
            headline shape); stable across runs.
        summary: one line for a person, e.g. ``nuc_loss raised ValueError('...')``.
        rows: ``(rule, term)`` of each failing row this cause explains, in table order.
        failures: the failed tests behind those rows; the first is the representative.
    """

    key: str
    summary: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    failures: list[FailureLike] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """``{"summary": ..., "rows": [{"rule": ..., "term": ...}, ...]}``."""
        return {
            "summary": self.summary,
            "rows": [{"rule": rule, "term": term} for rule, term in self.rows],
        }


def message_shape(text: str) -> str:
    """``text`` with numbers, shapes, positions and addresses normalized (one line).

    >>> message_shape("got -100 at (0, 1, 3) (12 of 48), shape [3, 4]")
    'got # at (…) (# of #), shape […]'
    """
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _ADDRESS.sub("0x#", line)
    line = _NUMBER.sub("#", line)
    # A tuple or list of numbers (a shape, a position) of any length is one shape.
    line = _SEQUENCE.sub(r"\1…\2", line)
    return line


def _details(message: str) -> tuple[str, str, str, dict[str, str]]:
    """``(rule, term, headline, details)`` of a rendered ``ContractViolation`` (or blanks)."""
    lines = message.splitlines()
    match = _HEADLINE.match(lines[0]) if lines else None
    if match is None:
        return "", "", "", {}
    details: dict[str, str] = {}
    for line in lines[1:]:
        found = _DETAIL.match(line)
        if found is not None:
            details[found.group("label")] = found.group("text")
    return match.group("rule"), match.group("term"), match.group("headline"), details


def _exception_of(message: str) -> str | None:
    """The exception text a failure carries, ``"Type: message"``, if any."""
    rule, _, _, details = _details(message)
    if rule:
        for label in _EXCEPTION_LABELS:
            if label in details and _EXCEPTION.match(details[label]):
                return details[label]
        return None
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if _EXCEPTION.match(first) else None


def _cut(text: str) -> str:
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 3].rstrip() + "..."


def cause_of(failure: FailureLike) -> tuple[str, str]:
    """``(key, what)`` of one failure: the grouping key and the summary without its terms."""
    exception = _exception_of(failure.message)
    if exception is not None:
        match = _EXCEPTION.match(exception)
        assert match is not None
        kind = match.group("type").rpartition(".")[2]
        shape = message_shape(exception[match.end() :])
        return f"raised {kind}: {shape}", f"raised {kind}({_cut(shape)!r})"
    _, _, headline, _ = _details(failure.message)
    shape = message_shape(headline or failure.message) or "failed"
    return (
        f"{failure.rule} {failure.term}: {shape}",
        f"{failure.rule} {failure.term}: {_cut(shape)}",
    )


def _generic_headline(failure: FailureLike) -> str:
    """The headline shape with the failure's own term name replaced by a placeholder."""
    _, _, headline, _ = _details(failure.message)
    return message_shape(headline or failure.message).replace(failure.term, "{term}")


def _who(terms: Iterable[str]) -> str:
    """The terms a raising cause names: the per-term ones (the total only when alone)."""
    chosen = sorted(set(terms))
    own = [t for t in chosen if t != "total_loss"]
    return ", ".join(own or chosen)


def group_causes(failures: Sequence[FailureLike]) -> list[Cause]:
    """Group failures into causes; each failing ``(rule, term)`` row lands in exactly one.

    Failures are read in the order given (the gate passes them in table order); a row takes
    the cause of its first failure. Causes come largest first, then in table order.
    """
    by_key: dict[str, Cause] = {}
    row_cause: dict[tuple[str, str], str] = {}
    whats: dict[str, str] = {}
    # (rule, headline shape with the term's name as a placeholder) -> first per-term cause.
    per_term: dict[tuple[str, str], str] = {}
    for failure in failures:
        key, what = cause_of(failure)
        if not key.startswith("raised "):
            generic = (failure.rule, _generic_headline(failure))
            if failure.term == "total_loss":
                key = per_term.get(generic, key)
            else:
                per_term.setdefault(generic, key)
        row = (failure.rule, failure.term)
        key = row_cause.setdefault(row, key)
        cause = by_key.get(key)
        if cause is None:
            cause = by_key[key] = Cause(key=key, summary="")
            whats[key] = what
        if row not in cause.rows:
            cause.rows.append(row)
        cause.failures.append(failure)
    for key, cause in by_key.items():
        what = whats[key]
        if what.startswith("raised "):
            cause.summary = f"{_who(term for _, term in cause.rows)} {what}"
        else:
            cause.summary = what
    order = {key: i for i, key in enumerate(by_key)}
    return sorted(by_key.values(), key=lambda c: (-len(c.rows), order[c.key]))


def render_causes(causes: Sequence[Cause], *, labels: Sequence[str] | None = None) -> str:
    """The causes block the gate prints first: one line per cause, then its rows.

    ``labels`` (one per cause) is appended to the cause's line, e.g. ``"known"``.
    """
    if not causes:
        return ""
    rows = sum(len(c.rows) for c in causes)
    noun = "cause explains" if len(causes) == 1 else "causes explain"
    lines = [f"{len(causes)} {noun} {rows} failing row{'s' if rows != 1 else ''}:"]
    for i, cause in enumerate(causes, start=1):
        label = f" [{labels[i - 1]}]" if labels and labels[i - 1] else ""
        n = len(cause.rows)
        lines.append(f"  cause {i}: {n} row{'s' if n != 1 else ''}: {cause.summary}{label}")
        lines.append("    " + ", ".join(f"{rule} {term}" for rule, term in cause.rows))
    return "\n".join(lines)
