"""``python -m robustness {gate,replay,selftest}`` (also installed as ``robustness``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

_USAGE = """usage: robustness {gate,replay,selftest} [options]

  gate      run the contract against a loss/metrics implementation and print the verdict
  replay    re-run the check recorded in a repro file
  selftest  run the gate on every mutant of the corpus and on aam; print the kill table

'robustness COMMAND --help' describes each command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command; exit status 2 for an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
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


if __name__ == "__main__":
    sys.exit(main())
