"""The mutation report: per-mutant records, the score, tables per operator and per file.

The score is ``(killed + timeout) / (killed + timeout + survived)``: a timeout counts as
killed (reported apart), ``invalid`` mutants (they do not import) and mutants listed as
equivalent are not counted. Numerical and generic operators are scored apart; the top-level
``score`` is the numerical one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robustness.errors import HarnessUsageError

__all__ = ["REPORT_FORMAT", "STATUSES", "Record", "render", "report_json", "score_of", "tables"]

REPORT_FORMAT = 1
STATUSES = ("killed", "timeout", "survived", "equivalent", "invalid")


@dataclass
class Record:
    """One mutant's line of the report."""

    id: str
    operator: str
    generic: bool
    file: str
    line: int
    function: str
    status: str
    rule: str = ""
    test: str = ""
    detail: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the worker's CPU time on this mutant (load-independent)
    tests_run: int = 0
    before: str = ""  # the original node's text (ast.unparse)
    after: str = ""  # the replacement's text
    diff: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> Record:
        """Read one entry of a report's ``mutants`` list.

        Raises:
            HarnessUsageError: if a required key is missing or the status is unknown.
        """
        try:
            record = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as exc:
            raise HarnessUsageError(f"{source}: a mutant entry lacks a key ({exc})") from None
        if record.status not in STATUSES:
            raise HarnessUsageError(
                f"{source}: mutant {record.id} has unknown status {record.status!r}"
            )
        return record


def score_of(records: Iterable[Record]) -> float | None:
    """``(killed + timeout) / (killed + timeout + survived)``, ``None`` when nothing counts."""
    counted = [r for r in records if r.status in ("killed", "timeout", "survived")]
    if not counted:
        return None
    return sum(r.status != "survived" for r in counted) / len(counted)


def _counts(records: Sequence[Record]) -> dict[str, int]:
    return {status: sum(r.status == status for r in records) for status in STATUSES}


def tables(records: Sequence[Record]) -> dict[str, dict[str, dict[str, Any]]]:
    """Counts and score grouped ``by_operator`` and ``by_file``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, attribute in (("by_operator", "operator"), ("by_file", "file")):
        groups: dict[str, list[Record]] = {}
        for record in records:
            groups.setdefault(getattr(record, attribute), []).append(record)
        out[key] = {
            name: {**_counts(members), "score": score_of(members)}
            for name, members in sorted(groups.items())
        }
    return out


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(title: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    header = (title, "killed", "timeout", "survived", "equiv", "invalid", "score")
    rows = [
        (
            name,
            str(g["killed"]),
            str(g["timeout"]),
            str(g["survived"]),
            str(g["equivalent"]),
            str(g["invalid"]),
            _percent(g["score"]),
        )
        for name, g in groups.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, tuple("-" * w for w in widths), *rows]:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return lines


def render(
    records: Sequence[Record], original: Mapping[str, Any], *, show_survivors: bool = True
) -> str:
    """The human-readable report: the original's state, tables, survivors with their diffs."""
    lines: list[str] = []
    failing = original.get("failed_rules") or []
    if failing:
        lines += [
            f"NOTE: the original target fails {', '.join(failing)} "
            f"({original.get('failed_tests', 0)} test(s)). Those rules are left out of every "
            "mutant's run: a mutant counts as killed only by rules the original passes.",
            "",
        ]
    numerical = [r for r in records if not r.generic]
    generic = [r for r in records if r.generic]
    for label, members in (("numerical operators", numerical), ("generic operators", generic)):
        if not members:
            continue
        grouped = tables(members)
        lines += [f"{label}:", *_table("operator", grouped["by_operator"]), ""]
        lines += [*_table("file", grouped["by_file"]), ""]
    if show_survivors:
        for record in records:
            if record.status == "survived":
                lines += [
                    f"SURVIVED {record.id} {record.operator} {record.file}:{record.line} "
                    f"({record.function})",
                    record.diff.rstrip(),
                    "",
                ]
    invalid = [r for r in records if r.status == "invalid"]
    for record in invalid:
        lines.append(f"invalid {record.id} {record.file}:{record.line}: {record.detail}")
    counts = _counts(records)
    lines.append(
        f"robustness mutate: score {_percent(score_of(numerical))} "
        f"({counts['killed']} killed, {counts['timeout']} timeout, {counts['survived']} "
        f"survived, {counts['equivalent']} equivalent, {counts['invalid']} invalid of "
        f"{len(records)})"
        + (f"; generic operators {_percent(score_of(generic))}" if generic else "")
    )
    return "\n".join(lines)


def report_json(
    records: Sequence[Record], original: Mapping[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``--report-json`` document (``score``, ``mutants``, tables, the original's state)."""
    numerical = [r for r in records if not r.generic]
    generic = [r for r in records if r.generic]
    return {
        "format": REPORT_FORMAT,
        "score": score_of(numerical),
        "generic_score": score_of(generic),
        "counts": _counts(records),
        **tables(records),
        "original": dict(original),
        **extra,
        "mutants": [asdict(r) for r in records],
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write a report document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
