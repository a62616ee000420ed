"""Prove the gate catches real bugs: run it on every mutant of the corpus and on ``aam``.

For each mutant the gate runs (in its own process, so nothing leaks between targets) only the
rule the mutant declares, stopping at the first failure; the mutant is *killed* when the gate
exits 1 with that rule failing. Then the whole gate runs against ``aam``, which must pass.
Prints a kill table: mutant → rule → caught by → seconds to the first failure.

Exit status: 0 every mutant killed and ``aam`` passes, 1 otherwise, 2 usage error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from robustness.gate import EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, PROFILE_CHOICES, _Parser
from robustness.mutants import CORPUS, Mutant

__all__ = ["Kill", "gate_command", "run_mutant", "run_selftest"]


@dataclass(frozen=True)
class Kill:
    """The outcome of the gate on one mutant."""

    mutant: Mutant
    exit_status: int
    failed_rules: tuple[str, ...]
    seconds: float
    first_failure: str

    @property
    def killed(self) -> bool:
        """True when the gate failed with the rule the mutant declares."""
        return self.exit_status == EXIT_VIOLATION and self.mutant.rule in self.failed_rules


def gate_command(
    *,
    target: str,
    metrics: str,
    profile: str,
    report: Path,
    rules: str | None = None,
    maxfail: int = 0,
    workers: int = 0,
    repro_dir: Path | None = None,
) -> list[str]:
    """The ``python -m robustness gate`` command line the self-test runs."""
    command = [
        sys.executable,
        "-m",
        "robustness",
        "gate",
        "--quiet",
        "--target",
        target,
        "--metrics",
        metrics,
        "--profile",
        profile,
        "--workers",
        str(workers),
        "--report-json",
        str(report),
        "--device",
        "cpu",
    ]
    if rules:
        command += ["--rules", rules]
    if maxfail:
        command += ["--maxfail", str(maxfail)]
    if repro_dir:
        command += ["--repro-dir", str(repro_dir)]
    return command


def run_mutant(mutant: Mutant, *, profile: str, workdir: Path) -> Kill:
    """Run the gate on ``mutant``, restricted to its declared rule; stop at the first failure."""
    report = workdir / f"{mutant.name}.json"
    command = gate_command(
        target=mutant.target,
        metrics=mutant.metrics,
        profile=profile,
        report=report,
        rules=mutant.rule,
        maxfail=1,
        # One folder per mutant: mutants run in parallel, and two that fail with the same
        # message would otherwise write the same repro file name.
        repro_dir=workdir / "repros" / mutant.name,
    )
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    failed: tuple[str, ...] = ()
    first = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    if report.exists():
        verdict = json.loads(report.read_text())
        failures = [t for t in verdict["tests"] if t["outcome"] == "failed"]
        failed = tuple(sorted({t["rule"] for t in failures}))
        if failures:
            first = failures[0]["message"].splitlines()[0]
    return Kill(mutant, done.returncode, failed, seconds, first)


def _verdict(kill: Kill) -> str:
    if kill.killed:
        return ", ".join(kill.failed_rules)
    if kill.exit_status in (EXIT_OK, EXIT_VIOLATION):
        return f"SURVIVED (exit {kill.exit_status})"
    # Usage error or a broken run: the mutant was never judged, so it did not "survive".
    return f"NOT RUN (gate exit {kill.exit_status})"


def _render(kills: Sequence[Kill]) -> str:
    header = ("mutant", "rule", "caught by", "seconds", "bug")
    rows = [
        (
            k.mutant.name,
            k.mutant.rule,
            _verdict(k),
            f"{k.seconds:.1f}",
            k.mutant.bug,
        )
        for k in kills
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, (*tuple("-" * w for w in widths), "---"), *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
    unkilled = [k for k in kills if not k.killed]
    if unkilled:
        lines += ["", "not killed:"]
        lines += [f"  {k.mutant.name}: {k.first_failure or '(no output)'}" for k in unkilled]
    return "\n".join(lines)


def run_selftest(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m robustness selftest``; return the exit status."""
    parser = _Parser(prog="robustness selftest", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        default="ci",
        help="Hypothesis profile for every gate run (default: ci)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="gate runs at once (default: 2)")
    parser.add_argument(
        "--mutants", default=None, metavar="NAME[,NAME...]", help="only these mutants"
    )
    parser.add_argument(
        "--skip-aam", action="store_true", help="do not run the full gate against aam"
    )
    parser.add_argument("--report-json", type=Path, default=None, metavar="PATH")
    options = parser.parse_args(argv)
    if options.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {options.jobs}")
    mutants = list(CORPUS)
    if options.mutants:
        names = {n.strip() for n in options.mutants.split(",") if n.strip()}
        unknown = names - {m.name for m in CORPUS}
        if unknown:
            parser.error(f"unknown mutant(s) {', '.join(sorted(unknown))}")
        mutants = [m for m in CORPUS if m.name in names]
    if not mutants:
        print("robustness selftest: error: the mutant corpus is empty", file=sys.stderr)
        return EXIT_USAGE

    with tempfile.TemporaryDirectory(prefix="robustness-selftest-") as tmp:
        workdir = Path(tmp)
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            kills = list(
                pool.map(lambda m: run_mutant(m, profile=options.profile, workdir=workdir), mutants)
            )
        print(_render(kills))
        survivors = [k for k in kills if not k.killed]
        aam_status, aam_seconds = EXIT_OK, 0.0
        if not options.skip_aam:
            report = workdir / "aam.json"
            from robustness.target import DEFAULT_LOSS_TARGET, DEFAULT_METRICS_TARGET

            command = gate_command(
                target=DEFAULT_LOSS_TARGET,
                metrics=DEFAULT_METRICS_TARGET,
                profile=options.profile,
                report=report,
                workers=options.jobs,
                repro_dir=workdir / "repros",
            )
            started = time.perf_counter()
            aam_status = subprocess.run(command, check=False).returncode
            aam_seconds = time.perf_counter() - started

    killed = len(kills) - len(survivors)
    print(
        f"\nrobustness selftest: {killed}/{len(kills)} mutants killed "
        f"({100 * killed / len(kills):.0f}%), profile {options.profile}"
        + (
            ""
            if options.skip_aam
            else f"; aam {'passes' if aam_status == EXIT_OK else 'FAILS'} the full gate "
            f"({aam_seconds:.1f} s)"
        )
    )
    if options.report_json:
        options.report_json.write_text(
            json.dumps(
                {
                    "profile": options.profile,
                    "killed": killed,
                    "mutants": [
                        {
                            "name": k.mutant.name,
                            "rule": k.mutant.rule,
                            "bug": k.mutant.bug,
                            "killed": k.killed,
                            "failed_rules": list(k.failed_rules),
                            "exit_status": k.exit_status,
                            "seconds": round(k.seconds, 2),
                            "first_failure": k.first_failure,
                        }
                        for k in kills
                    ],
                    "aam_exit_status": None if options.skip_aam else aam_status,
                },
                indent=2,
            )
            + "\n"
        )
    return EXIT_OK if not survivors and aam_status == EXIT_OK else EXIT_VIOLATION
