"""Split mutants over CI jobs (``--shard K/N``) and merge their reports (``--merge``).

A mutant's shard is a function of its id alone (``int(id, 16) % N``), so shards are
disjoint, their union is the whole, and a mutant stays in its shard when others are added
or removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from robustness.errors import HarnessUsageError
from robustness.mutate.reporting import REPORT_FORMAT, Record

__all__ = ["in_shard", "merge_reports", "parse_shard"]

_T = TypeVar("_T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)``.

    Raises:
        HarnessUsageError: unless ``1 <= K <= N``.
    """
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or n < 1 or not 1 <= k <= n:
        raise HarnessUsageError(f"--shard: expected K/N with 1 <= K <= N (e.g. 1/2), got {text!r}")
    return k, n


def in_shard(mutant_id: str, shard: tuple[int, int]) -> bool:
    """Whether the mutant with ``mutant_id`` belongs to shard ``K/N``."""
    k, n = shard
    return int(mutant_id, 16) % n == k - 1


def shard_of(items: Iterable[_T], shard: tuple[int, int] | None, key: Any) -> list[_T]:
    """The items of one shard (all of them for ``None``)."""
    return [i for i in items if shard is None or in_shard(key(i), shard)]


def merge_reports(paths: Sequence[Path]) -> tuple[list[Record], dict[str, Any]]:
    """Read shard reports and combine them: ``(records sorted as listed, original state)``.

    Raises:
        HarnessUsageError: for an unreadable report, a different format, reports of different
            targets, or one mutant reported twice with different statuses.
    """
    if not paths:
        raise HarnessUsageError("--merge: give at least one report JSON file")
    merged: dict[str, Record] = {}
    original: dict[str, Any] = {}
    target: Any = None
    for path in paths:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HarnessUsageError(f"--merge: cannot read {path}: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != REPORT_FORMAT:
            raise HarnessUsageError(
                f"--merge: {path} is not a robustness mutate report (format {REPORT_FORMAT})"
            )
        this_target = (document.get("target"), document.get("metrics"))
        if target is not None and this_target != target:
            raise HarnessUsageError(
                f"--merge: {path} reports target {this_target} but an earlier report {target}"
            )
        target = this_target
        failed = set(original.get("failed_rules", [])) | set(
            document.get("original", {}).get("failed_rules", [])
        )
        original = {**original, **document.get("original", {}), "failed_rules": sorted(failed)}
        for entry in document.get("mutants", []):
            record = Record.from_json(entry, str(path))
            seen = merged.get(record.id)
            if seen is not None and seen.status != record.status:
                raise HarnessUsageError(
                    f"--merge: mutant {record.id} is {seen.status} in one report and "
                    f"{record.status} in {path}; merge reports of one run"
                )
            merged[record.id] = record
    records = sorted(merged.values(), key=lambda r: (r.file, r.line, r.id))
    return records, {**original, "target": target[0], "metrics": target[1]}
