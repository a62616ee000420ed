"""Equivalent mutants: a reviewed list of mutants no test could kill, with the reason.

The file is TOML: a list of ``[[equivalent]]`` tables, each with a ``reason`` and either an
``id`` (one mutant) or an ``operator`` + ``file`` (+ optional ``function``) pattern (a
whole class of mutants that cannot matter there, e.g. ``detach-inserted`` in metrics code
that returns Python floats). Listed mutants that survive are reported ``equivalent`` and
left out of the score; a listed mutant that is killed stays killed (the entry is stale and
the report says so).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from robustness.errors import HarnessUsageError
from robustness.mutate.generation import Mutant

__all__ = ["AAM_EQUIVALENTS", "Equivalent", "load_equivalents"]

#: The reviewed list for the built-in aam target.
AAM_EQUIVALENTS = Path(__file__).with_name("equivalent.toml")


@dataclass(frozen=True)
class Equivalent:
    """One entry of the equivalent-mutants file."""

    reason: str
    id: str | None = None
    operator: str | None = None
    file: str | None = None
    function: str | None = None

    def matches(self, mutant: Mutant) -> bool:
        """Whether this entry covers ``mutant``."""
        if self.id is not None:
            return mutant.id == self.id
        return (
            mutant.operator == self.operator
            and mutant.file == self.file
            and (self.function is None or mutant.function == self.function)
        )


def load_equivalents(path: Path) -> list[Equivalent]:
    """Read an equivalent-mutants file.

    Raises:
        HarnessUsageError: if it cannot be read or an entry lacks a reason or a target.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HarnessUsageError(f"--equivalent: cannot read {path}: {exc}") from None
    entries = []
    for position, entry in enumerate(data.get("equivalent", []), start=1):
        unknown = set(entry) - {"reason", "id", "operator", "file", "function"}
        if unknown or not isinstance(entry.get("reason"), str) or not entry["reason"].strip():
            raise HarnessUsageError(
                f"--equivalent: {path} entry {position} needs a non-empty reason and only "
                f"id/operator/file/function keys (got {sorted(entry)})"
            )
        if "id" not in entry and not ("operator" in entry and "file" in entry):
            raise HarnessUsageError(
                f"--equivalent: {path} entry {position} needs an id, or an operator and a file"
            )
        entries.append(Equivalent(**entry))
    return entries
