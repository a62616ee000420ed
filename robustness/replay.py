"""Replay repro files: re-run the checks that failed, on the same inputs, in a new process.

A repro file is written by the pytest plugin for every violation, in the run's own folder
``<repro dir>/<run id>/``; ``<repro dir>/last`` names the latest run's folder. Files hold only
tensors and plain data and are read with ``torch.load(..., weights_only=True)``, never as an
arbitrary pickle; the check a file names must be a function of ``robustness.properties``.

``replay FILE [FILE ...]`` takes files and folders (every ``*.pt`` below a folder);
``replay --last-failed`` the latest run's repro files. A regression repro (C-REGRESS-*)
replays against the baseline it recorded, or ``--baseline`` / ``--baseline-metrics``.

Exit status: 1 while any violation reproduces (its message is printed), 0 once none does,
2 for a file, target or baseline that cannot be used (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustness.config import load_config
from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    from_plain,
    resolve_qualified_name,
)
from robustness.gate import EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, _Parser, add_target_options
from robustness.target import load_loss_target, load_metrics_target

__all__ = ["find_repros", "load_repro", "main", "run_replay"]

_ALLOWED_CHECK_PREFIX = "robustness.properties"
_FORMAT = 1
_DEFAULT_REPRO_DIR = Path(".robustness/repros")
_LAST_RUN_FILE = "last"  # robustness.plugin.LAST_RUN_FILE (not imported: that pulls pytest in)


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


def find_repros(paths: Sequence[Path], *, last_failed: bool, repro_dir: Path) -> list[Path]:
    """The repro files to replay: ``paths`` (folders expanded), or the last run's files.

    Raises:
        HarnessUsageError: for a path that does not exist, a folder without repro files, or
            ``last_failed`` without a recorded last run.
    """
    if last_failed:
        pointer = repro_dir / _LAST_RUN_FILE
        if not pointer.is_file():
            raise HarnessUsageError(
                f"--last-failed: {str(pointer)!r} does not exist (no gate or contract run has "
                "written repro files here; pass --repro-dir or files)"
            )
        run = repro_dir / pointer.read_text(encoding="utf-8").strip()
        # A run without violations has no folder: nothing to replay is not an error.
        return sorted(run.rglob("*.pt")) if run.is_dir() else []
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("*.pt"))
            if not found:
                raise HarnessUsageError(f"folder {str(path)!r} holds no repro files (*.pt)")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise HarnessUsageError(f"repro file {str(path)!r} does not exist")
    return files


def _baseline_target(payload: dict[str, Any], args: dict[str, Any], options: Any) -> None:
    """Resolve a regression repro's baseline (``--baseline*`` first), one line if it is gone."""
    if "baseline" not in args:
        return
    metrics = payload["kind"] == "metrics"
    chosen = options.baseline_metrics if metrics else options.baseline
    option = "--baseline-metrics MODULE" if metrics else "--baseline MODULE:CLASS"
    spec = chosen or str(args["baseline"])
    path = payload.get("baseline_path")
    if not chosen and path:
        if not Path(path).is_dir():
            raise HarnessUsageError(
                f"the baseline {spec!r} was a temporary checkout ({path}, made by --baseline-ref) "
                f"and is gone; replay against an importable baseline with {option}"
            )
        if path not in sys.path:
            sys.path.insert(0, path)
    load = load_metrics_target if metrics else load_loss_target
    try:
        args["baseline"] = load(spec)
    except HarnessUsageError as exc:
        raise HarnessUsageError(
            f"the baseline of this repro cannot be used ({exc}); replay against an importable "
            f"baseline with {option}"
        ) from None


def _prepare(path: Path, options: Any) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    payload = load_repro(path)
    root = payload.get("rootdir")
    if root and Path(root).is_dir() and root not in sys.path:
        sys.path.append(root)  # the repository the run checked, after the current directory
    check = resolve_qualified_name(payload["check"])
    if payload["kind"] == "loss":
        target: Any = load_loss_target(options.target or payload.get("loss_target"))
    elif payload["kind"] == "metrics":
        target = load_metrics_target(options.metrics or payload.get("metrics_target"))
    else:
        raise HarnessUsageError(f"unknown check kind {payload['kind']!r}")
    args = from_plain(payload["args"])
    _baseline_target(payload, args, options)
    return check, target, args, payload


def build_parser() -> argparse.ArgumentParser:
    """The replay command's options."""
    parser = _Parser(prog="robustness replay", description=__doc__.splitlines()[0])
    parser.add_argument(
        "files", type=Path, nargs="*", metavar="FILE", help="repro files or folders of them"
    )
    parser.add_argument(
        "--last-failed",
        action="store_true",
        help="replay the repro files of the latest run (<repro dir>/last)",
    )
    parser.add_argument(
        "--repro-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where runs wrote repro files (default: $ROBUSTNESS_REPRO_DIR, then repro_dir in "
        "[tool.robustness], then .robustness/repros)",
    )
    add_target_options(parser)
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="MODULE:CLASS",
        help="baseline loss for a regression repro (default: the one it recorded)",
    )
    parser.add_argument(
        "--baseline-metrics",
        default=None,
        metavar="MODULE",
        help="baseline metrics module for a regression repro (default: the one it recorded)",
    )
    return parser


def _repro_dir(options: Any) -> Path:
    import os

    if options.repro_dir is not None:
        return Path(options.repro_dir)
    from_env = os.environ.get("ROBUSTNESS_REPRO_DIR")
    if from_env:
        return Path(from_env)
    return load_config().repro_dir or _DEFAULT_REPRO_DIR


def run_replay(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m robustness replay`` with ``argv``; return the exit status."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if bool(options.files) == bool(options.last_failed):
        parser.error("give repro files or folders, or --last-failed (not both)")
    try:
        files = find_repros(
            options.files, last_failed=options.last_failed, repro_dir=_repro_dir(options)
        )
        prepared = [(path, *_prepare(path, options)) for path in files]
    except HarnessUsageError as exc:
        print(f"robustness replay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not prepared:
        print("robustness replay: the last run recorded no violations: nothing to replay")
        return EXIT_OK
    reproduced = 0
    for path, check, target, args, payload in prepared:
        try:
            check(target, **args)
        except ContractViolation as violation:
            reproduced += 1
            print(violation)
            print(f"\nreplayed {path} against {target.spec}: the violation reproduces\n")
            continue
        print(
            f"[{payload['rule']}] {payload['term']}: holds now for {target.spec} "
            f"(the violation recorded in {path} no longer reproduces)"
        )
    if len(prepared) > 1:
        print(f"robustness replay: {reproduced} of {len(prepared)} recorded violations reproduce")
    return EXIT_VIOLATION if reproduced else EXIT_OK


main = run_replay
