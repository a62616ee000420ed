"""``--since REV``: the lines of a file changed since a git revision (for pull requests)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from robustness.errors import HarnessUsageError

__all__ = ["changed_lines"]

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@", re.MULTILINE)


def changed_lines(path: Path, revision: str) -> set[int]:
    """Line numbers of ``path`` (as it is now) added or changed since ``revision``.

    An untracked file counts as changed everywhere. Deleted lines mark the line after them.

    Raises:
        HarnessUsageError: if ``path`` is not in a git repository or ``revision`` is unknown.
    """
    where = path.resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, check=False
        )

    check = git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if check.returncode != 0:
        found = git("rev-parse", "--show-toplevel")
        if found.returncode != 0:
            raise HarnessUsageError(f"--since: {path} is not inside a git repository")
        raise HarnessUsageError(f"--since: unknown git revision {revision!r}")
    tracked = git("ls-files", "--error-unmatch", path.name)
    if tracked.returncode != 0:
        return set(range(1, len(path.read_text(encoding="utf-8").splitlines()) + 1))
    diff = git("diff", "--unified=0", "--no-color", revision, "--", path.name)
    if diff.returncode != 0:
        raise HarnessUsageError(f"--since: git diff failed: {diff.stderr.strip()}")
    lines: set[int] = set()
    for match in _HUNK.finditer(diff.stdout):
        start = int(match.group(1))
        count = int(match.group(2)) if match.group(2) is not None else 1
        lines.update(range(start, start + max(count, 1)))
    return lines
