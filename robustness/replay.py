"""Replay a repro file: re-run the one check that failed, on the same input, in a new process.

A repro file is written by the pytest plugin for every violation. It holds only tensors and
plain data and is read with ``torch.load(..., weights_only=True)``, never as an arbitrary
pickle; the check it names must be a function of ``robustness.properties``.

Exit status: 1 while the violation reproduces (the same message is printed), 0 once it no
longer does, 2 for a file or target that cannot be used.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    from_plain,
    resolve_qualified_name,
)
from robustness.gate import EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, _Parser, add_target_options
from robustness.target import load_loss_target, load_metrics_target

__all__ = ["load_repro", "main"]

_ALLOWED_CHECK_PREFIX = "robustness.properties"
_FORMAT = 1


def load_repro(path: Path) -> dict[str, Any]:
    """Read a repro file safely (weights-only) and validate its layout.

    Raises:
        HarnessUsageError: if the file is missing, unreadable, or not a repro file.
    """
    import torch

    if not path.is_file():
        raise HarnessUsageError(f"repro file {str(path)!r} does not exist")
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        payload = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:
        raise HarnessUsageError(f"{str(path)!r} is not a readable repro file: {exc}") from exc
    required = ("format", "rule", "term", "check", "kind", "args")
    if not isinstance(payload, dict) or any(key not in payload for key in required):
        raise HarnessUsageError(f"{str(path)!r} is not a repro file (missing {required})")
    if payload["format"] != _FORMAT:
        raise HarnessUsageError(
            f"{str(path)!r} has repro format {payload['format']}, this harness reads {_FORMAT}"
        )
    if not str(payload["check"]).startswith(_ALLOWED_CHECK_PREFIX):
        raise HarnessUsageError(
            f"{str(path)!r} names check {payload['check']!r}, which is not a robustness check"
        )
    return payload


def run_replay(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m robustness replay`` with ``argv``; return the exit status."""
    parser = _Parser(prog="robustness replay", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a repro file written by a failing gate run")
    add_target_options(parser)
    options = parser.parse_args(argv)
    try:
        payload = load_repro(options.file)
        check = resolve_qualified_name(payload["check"])
        if payload["kind"] == "loss":
            target: Any = load_loss_target(options.target or payload.get("loss_target"))
        elif payload["kind"] == "metrics":
            target = load_metrics_target(options.metrics or payload.get("metrics_target"))
        else:
            raise HarnessUsageError(f"unknown check kind {payload['kind']!r}")
        args = from_plain(payload["args"])
    except HarnessUsageError as exc:
        print(f"robustness replay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check(target, **args)
    except ContractViolation as violation:
        print(violation)
        print(f"\nreplayed {options.file} against {target.spec}: the violation reproduces")
        return EXIT_VIOLATION
    print(
        f"[{payload['rule']}] {payload['term']}: holds now for {target.spec} "
        f"(the violation recorded in {options.file} no longer reproduces)"
    )
    return EXIT_OK


main = run_replay
