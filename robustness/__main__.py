"""``python -m robustness {gate,replay,selftest}`` (also installed as ``robustness``)."""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import sys
from collections.abc import Sequence
from typing import NoReturn

#: Exit status when the run itself cannot start (the gate's EXIT_BROKEN).
EXIT_BROKEN = 3
#: Modules every command needs, and the distribution that provides each.
_REQUIRED = {
    "torch": "torch",
    "numpy": "numpy",
    "hypothesis": "hypothesis",
    "pytest": "pytest",
    "xdist": "pytest-xdist",
}

_USAGE = """usage: robustness {gate,replay,selftest} [options]

  gate      run the contract against a loss/metrics implementation and print the verdict
  replay    re-run the check recorded in a repro file
  selftest  run the gate on every mutant of the corpus and on aam; print the kill table

'robustness COMMAND --help' describes each command's options; --version prints the version."""


def version() -> str:
    """The installed version of this package (``aam-robustness``)."""
    try:
        return importlib.metadata.version("aam-robustness")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def missing_dependency() -> str | None:
    """A one-line message naming the first missing required module, or ``None``."""
    for module, distribution in _REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (
                f"robustness: error: missing dependency {module!r}: install it with "
                f"'pip install {distribution}' (or reinstall: pip install aam-robustness)"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command; exit status 2 for an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"robustness {version()}")
        return 0
    command, rest = args[0], args[1:]
    if command in ("gate", "replay", "selftest"):
        missing = missing_dependency()
        if missing:
            print(missing, file=sys.stderr)
            return EXIT_BROKEN
    if command == "gate":
        from robustness.gate import run_gate

        return run_gate(rest)
    if command == "replay":
        from robustness.replay import run_replay

        return run_replay(rest)
    if command == "mutate":
        from robustness.mutate import run_mutate

        return run_mutate(rest)
    if command == "selftest":
        from robustness.selftest import run_selftest

        return run_selftest(rest)
    print(
        f"robustness: error: unknown command {command!r} (choose gate, replay or selftest)",
        file=sys.stderr,
    )
    return 2


def _exit(status: int) -> NoReturn:
    """Exit with ``status``, without the interpreter's final scan of the whole heap.

    The last thing the interpreter does is a full garbage collection; after the gate that heap
    holds torch, Hypothesis and pytest (0.4 s of CPU on 2 cores, after the verdict is printed).
    Frozen objects are left out of it, and the process ends: nothing of it needs collecting.
    """
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    _exit(main())
