"""Known violations that ratchet: record today's failures, fail only on new ones.

A project adopting the gate on an implementation that already breaks rules records those
failures in a *known file* (``robustness-known.json`` by default; ``python -m robustness gate
--write-known`` writes it). Each entry names a rule, a term and the cause's summary
(:mod:`robustness.causes`), plus a ``reason`` for a person to fill in; rewrites keep it.

With a known file, a failing row that matches an entry (same rule, term and cause) is
*known* and does not fail the gate; a failure that matches no entry fails as usual; an entry
whose row ran and no longer fails that way is *fixed* and fails the gate until
``--write-known`` removes it, so a fixed bug cannot silently come back. Entries whose rows did
not run (another ``--rules`` selection, a skipped device) are left alone.

The file is plain, stably sorted JSON so that a change to it reads well in review::

    {
      "format": 1,
      "violations": [
        {"rule": "C-MASK-1", "term": "count_loss", "cause": "C-MASK-1 count_loss: ...",
         "reason": "tracked in #12"}
      ]
    }
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from robustness.errors import HarnessUsageError

__all__ = [
    "DEFAULT_KNOWN_FILE",
    "KNOWN_FORMAT",
    "KnownEntry",
    "Ratchet",
    "compare",
    "load_known",
    "rewrite",
    "write_known",
]

#: The known file the gate uses when it exists in the current directory.
DEFAULT_KNOWN_FILE = "robustness-known.json"
KNOWN_FORMAT = 1
_FIELDS = ("rule", "term", "cause", "reason")

Row = tuple[str, str]


@dataclass(frozen=True)
class KnownEntry:
    """One recorded violation: rule, term, cause summary, and why it is accepted for now."""

    rule: str
    term: str
    cause: str
    reason: str = ""

    @property
    def row(self) -> Row:
        """``(rule, term)``."""
        return (self.rule, self.term)

    @property
    def match(self) -> tuple[str, str, str]:
        """What a failure must share with the entry: rule, term and cause."""
        return (self.rule, self.term, self.cause)

    def sort_key(self) -> tuple[int, str, str, str]:
        """Contract rules first, then by rule, term and cause (the gate's table order)."""
        return (0 if self.rule.startswith("C-") else 1, self.rule, self.term, self.cause)


@dataclass(frozen=True)
class Ratchet:
    """A run judged against the known file.

    Attributes:
        known: failing rows that match an entry (they do not fail the gate).
        new: failing rows that match none (they fail it).
        fixed: entries whose row ran and no longer fails with their cause (they fail it).
    """

    known: frozenset[Row]
    new: frozenset[Row]
    fixed: tuple[KnownEntry, ...]


def _bad(path: Path, why: str) -> HarnessUsageError:
    return HarnessUsageError(
        f"known file {str(path)!r} is malformed: {why} (fix it, or delete it and rerun with "
        "--write-known)"
    )


def load_known(path: Path) -> list[KnownEntry]:
    """The entries of the known file at ``path`` (none if it does not exist).

    Raises:
        HarnessUsageError: one line naming what is wrong with a file that is not a known file.
    """
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise _bad(path, f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("violations"), list):
        raise _bad(path, 'expected an object with a "violations" list')
    if data.get("format", KNOWN_FORMAT) != KNOWN_FORMAT:
        raise _bad(path, f"format {data.get('format')!r}, this gate reads format {KNOWN_FORMAT}")
    entries = []
    for i, item in enumerate(data["violations"]):
        if not isinstance(item, dict):
            raise _bad(path, f"violations[{i}] is not an object")
        missing = [f for f in _FIELDS[:3] if not isinstance(item.get(f), str) or not item[f]]
        if missing:
            raise _bad(path, f"violations[{i}] lacks a non-empty string {missing[0]!r}")
        unknown = sorted(set(item) - set(_FIELDS))
        if unknown:
            raise _bad(path, f"violations[{i}] has unknown field {unknown[0]!r}")
        reason = item.get("reason", "")
        if not isinstance(reason, str):
            raise _bad(path, f"violations[{i}] reason is not a string")
        entries.append(KnownEntry(item["rule"], item["term"], item["cause"], reason))
    seen: set[tuple[str, str, str]] = set()
    for entry in entries:
        if entry.match in seen:
            raise _bad(path, f"{entry.rule} {entry.term} is listed twice with the same cause")
        seen.add(entry.match)
    return entries


def compare(
    entries: Iterable[KnownEntry], failing: Mapping[Row, str], ran: Iterable[Row]
) -> Ratchet:
    """Judge a run against the known entries.

    Args:
        entries: the known file's entries.
        failing: each failing row -> its cause's summary.
        ran: every row that ran (passed or failed); entries of other rows are not judged.
    """
    listed = {entry.match for entry in entries}
    known = frozenset(row for row, cause in failing.items() if (*row, cause) in listed)
    ran_rows = set(ran)
    fixed = tuple(
        entry
        for entry in sorted(entries, key=KnownEntry.sort_key)
        if entry.row in ran_rows and failing.get(entry.row) != entry.cause
    )
    return Ratchet(known=known, new=frozenset(failing) - known, fixed=fixed)


def rewrite(
    entries: Iterable[KnownEntry], failing: Mapping[Row, str], ran: Iterable[Row]
) -> list[KnownEntry]:
    """The known file after ``--write-known``: today's failures, reasons kept.

    Entries of rows that did not run are kept as they are; a failure keeps the reason of the
    entry with the same rule, term and cause.
    """
    old = list(entries)
    reasons = {entry.match: entry.reason for entry in old}
    ran_rows = set(ran) | set(failing)
    kept = [entry for entry in old if entry.row not in ran_rows]
    current = [
        KnownEntry(rule, term, cause, reasons.get((rule, term, cause), ""))
        for (rule, term), cause in failing.items()
    ]
    return sorted(kept + current, key=KnownEntry.sort_key)


def write_known(path: Path, entries: Iterable[KnownEntry]) -> None:
    """Write ``entries`` to ``path`` as stably sorted, indented JSON."""
    violations = [
        {"rule": e.rule, "term": e.term, "cause": e.cause, "reason": e.reason}
        for e in sorted(entries, key=KnownEntry.sort_key)
    ]
    text = json.dumps({"format": KNOWN_FORMAT, "violations": violations}, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
