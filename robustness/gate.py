"""The gate: run the contract suite against a target and print a verdict a person can read.

``python -m robustness gate`` runs the packaged contract suite (``robustness.contract``)
through pytest, with pytest-xdist workers, against the loss class and metrics module named by
import path. It prints one row per rule id × term (pass / FAIL / skipped with its reason,
examples run, seconds), then each violation with its minimal input and the command that
replays it.

With a baseline (``--baseline MODULE:CLASS``, ``--baseline-metrics MODULE``, or
``--baseline-ref REV``: the target's own modules as they were at git revision REV) the suite
also runs the differential rules C-REGRESS-1..4 against it; ``--regress-only`` and
``--regress-skip`` limit them to, or exclude, named terms and metrics (see
docs/regression-guard.md).

Failing rows are grouped by root cause (``robustness.causes``) and printed cause first. With a
known file (``--known``, default ``robustness-known.json`` when it exists; ``--write-known``
writes it) recorded failures are reported as ``known`` and do not fail the gate, while a new
failure or an entry that no longer fails does (``robustness.known``).

Exit status: 0 every rule holds (or fails only as recorded in the known file), 1 a rule is
violated or a known entry is fixed, 2 usage error (bad option, a target or baseline that
cannot be imported or lacks the interface, a revision or module that does not exist, a
malformed known file; one line on stderr), 3 the run itself broke, 4 nothing was checked
(every selected row was skipped, e.g. ``--device cuda`` without a GPU; one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from robustness import changes
from robustness.baseline import (
    BASELINE_ENV,
    BASELINE_METRICS_ENV,
    REGRESS_ONLY_ENV,
    REGRESS_SKIP_ENV,
    RegressSelection,
    materialized,
)
from robustness.causes import Cause, group_causes, render_causes
from robustness.config import gate_defaults, load_config
from robustness.devices import DEVICE_CHOICES
from robustness.errors import HarnessUsageError
from robustness.known import (
    DEFAULT_KNOWN_FILE,
    KnownEntry,
    Ratchet,
    compare,
    load_known,
    rewrite,
    write_known,
)
from robustness.profiles import PROFILES, profile_kept
from robustness.target import LossTarget, MetricsTarget, load_loss_target, load_metrics_target

__all__ = [
    "EXIT_BROKEN",
    "EXIT_NOTHING_CHECKED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VIOLATION",
    "TestOutcome",
    "build_parser",
    "main",
    "run_gate",
]

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_BROKEN = 3
EXIT_NOTHING_CHECKED = 4

_EXIT_HELP = """exit status:
  0  every rule holds (or fails only as recorded in the known file)
  1  a rule is violated, or a known-file entry no longer fails (rerun with --write-known)
  2  usage error: bad option, target, baseline or known file (one line on stderr)
  3  the run itself broke
  4  nothing was checked: every selected row was skipped (one line on stderr says why)"""

PROFILE_CHOICES = tuple(PROFILES)
_GATE_INI = Path(__file__).with_name("gate.ini")
# The gate runs a hermetic pytest: whatever other plugins the environment has installed
# (pytest-benchmark, pytest-randomly, ...) stay out, so the verdict depends only on the
# target and the profile. PYTEST_PLUGINS reaches the xdist workers too.
_GATE_PLUGINS = (
    "xdist.plugin",
    "xdist.looponfail",
    "_hypothesis_pytestplugin",
    "robustness.plugin",
    "robustness.changes_plugin",
    "robustness.gate_runtime",
)
# Hypothesis's per-phase statistics line: "N passing examples, M failing examples" up to
# 6.16x, "N passing, M failing, and K invalid test cases" since.
_EXAMPLES_RE = re.compile(r"(\d+) passing(?: examples)?, (\d+) failing")


@dataclass
class TestOutcome:
    """What one contract test did, as the gate reports it."""

    __test__ = False  # not a pytest test class, despite its name

    nodeid: str
    rule: str
    term: str
    device: str
    outcome: str = "passed"  # passed | failed | skipped
    reason: str = ""
    seconds: float = 0.0
    examples: int = 0
    message: str = ""
    repro: str = ""
    hypothesis: bool = False  # whether Hypothesis reported statistics (else a plain test)


@dataclass(eq=False)  # registered as a pytest plugin, which must be hashable
class _Collector:
    """A pytest plugin object that gathers reports (xdist forwards workers' reports here)."""

    outcomes: dict[str, TestOutcome] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def _outcome(self, report: Any) -> TestOutcome:
        props = dict(report.user_properties)
        found = self.outcomes.get(report.nodeid)
        if found is None:
            found = TestOutcome(
                nodeid=report.nodeid,
                rule=str(props.get("rule", "-")),
                term=str(props.get("term", "-")),
                device=str(props.get("device", "-")),
            )
            self.outcomes[report.nodeid] = found
        return found

    def pytest_runtest_logreport(self, report: Any) -> None:
        outcome = self._outcome(report)
        outcome.seconds += report.duration
        props = dict(report.user_properties)
        if report.skipped and outcome.outcome != "failed":
            outcome.outcome = "skipped"
            longrepr = report.longrepr
            outcome.reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
            outcome.reason = outcome.reason.removeprefix("Skipped: ")
        elif report.failed:
            outcome.outcome = "failed"
            outcome.message = str(props.get("violation") or _short_failure(report))
            outcome.repro = str(props.get("repro", ""))
        stats = report.__dict__.get("_hypothesis_stats")
        if isinstance(stats, str):
            outcome.hypothesis = True
            outcome.examples += sum(int(a) + int(b) for a, b in _EXAMPLES_RE.findall(stats))

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.errors.append(f"cannot collect {report.nodeid}: {_short_failure(report)}")


def _short_failure(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        # A violation's own text starts with its rule id; the exception's dotted class name
        # that pytest puts before it says nothing to a reader.
        return str(crash.message).removeprefix(_VIOLATION_PREFIX)
    return str(report.longrepr).strip().splitlines()[-1] if report.longrepr else "failed"


_VIOLATION_PREFIX = "robustness.errors.ContractViolation: "


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "robustness gate") -> argparse.ArgumentParser:
    """The gate's command-line options."""
    parser = _Parser(
        prog=prog,
        description=__doc__.splitlines()[0],
        epilog=_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_options(parser)
    parser.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        default=None,
        help="Hypothesis profile (default: ci under CI=true, else dev)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="all",
        help="devices for device-generic rules; cuda is skipped with a reason "
        "where it cannot run (default: all)",
    )
    parser.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="pytest-xdist workers; 0 runs in this process (default: 2; with --changed, 0 "
        "when only one term runs, or under --profile commit one term and total_loss)",
    )
    parser.add_argument(
        "--rules", default=None, metavar="ID[,ID...]", help="check only these rule ids"
    )
    parser.add_argument(
        "--skip-rules",
        default=None,
        metavar="ID[,ID...]",
        help="leave out these rule ids or prefixes (e.g. C-DDP)",
    )
    parser.add_argument(
        "--maxfail",
        type=_non_negative_int,
        default=0,
        help="stop after this many failing tests (default: 0, run all)",
    )
    parser.add_argument(
        "--report-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the verdict as JSON",
    )
    parser.add_argument(
        "--junitxml",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write pytest's JUnit XML report",
    )
    parser.add_argument(
        "--repro-dir",
        type=Path,
        default=Path(".robustness/repros"),
        metavar="DIR",
        help="where violations write repro files",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    add_known_options(parser)
    add_baseline_options(parser)
    changes.add_changed_options(parser)
    return parser


def add_known_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--known`` (dest ``known``) and ``--write-known``: violations that ratchet."""
    group = parser.add_argument_group(
        "known violations",
        "record today's failures; fail only on new ones and on recorded ones that were fixed",
    )
    group.add_argument(
        "--known",
        dest="known",
        default=None,
        metavar="PATH",
        help=f"known-violations file (default: {DEFAULT_KNOWN_FILE} in the current "
        "directory, used when it exists)",
    )
    group.add_argument(
        "--write-known",
        action="store_true",
        help="write this run's failures to the known file (reasons kept), then judge the "
        "run against it",
    )


def add_baseline_options(parser: argparse.ArgumentParser) -> None:
    """Add the regression guard's options (the differential rules C-REGRESS-1..4)."""
    group = parser.add_argument_group(
        "regression guard", "compare the target with a baseline on the same generated inputs"
    )
    group.add_argument(
        "--baseline",
        default=None,
        metavar="MODULE:CLASS",
        help=f"baseline loss class (default: ${BASELINE_ENV}); with --baseline-ref: which "
        "loss at REV (default: the target's)",
    )
    group.add_argument(
        "--baseline-metrics",
        default=None,
        metavar="MODULE",
        help=f"baseline metrics module (default: ${BASELINE_METRICS_ENV}); with "
        "--baseline-ref: which module at REV (default: the target's)",
    )
    group.add_argument(
        "--baseline-ref",
        default=None,
        metavar="REV",
        help="baseline: the target's loss and metrics modules as they were at this git "
        "revision of the current repository (e.g. main, HEAD~1, a merge base)",
    )
    group.add_argument(
        "--regress-only",
        default=None,
        metavar="TERM[,TERM...]",
        help="compare only these loss terms / metrics (count_loss, regression, regression.r2; "
        f"default: ${REGRESS_ONLY_ENV})",
    )
    group.add_argument(
        "--regress-skip",
        default=None,
        metavar="TERM[,TERM...]",
        help="leave these loss terms / metrics out of the comparison: approve a change "
        f"(default: ${REGRESS_SKIP_ENV})",
    )


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--target`` and ``--metrics`` (shared by gate and replay)."""
    parser.add_argument(
        "--target",
        default=None,
        metavar="MODULE:CLASS",
        help="loss class under test (default: $ROBUSTNESS_TARGET, then "
        "aam.training.losses:MultiTaskLoss)",
    )
    parser.add_argument(
        "--metrics",
        default=None,
        metavar="MODULE",
        help="metrics module under test, or 'none' to check the loss only (default: "
        "$ROBUSTNESS_METRICS, then aam.training.metrics)",
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _default_profile() -> str:
    return "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"


@contextlib.contextmanager
def _hermetic_plugins(workers: int) -> Iterator[None]:
    """Load only the plugins the contract needs, in this process and in xdist workers."""
    saved = {
        key: os.environ.get(key) for key in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS")
    }
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    plugins = [p for p in _GATE_PLUGINS if workers or not p.startswith("xdist")]
    os.environ["PYTEST_PLUGINS"] = ",".join(plugins)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: Environment variables that set the intra-op threads of torch's CPU backends at import.
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Run torch with one intra-op thread here and in the workers and ranks started meanwhile.

    The contract's tensors are tiny, so intra-op threads only add synchronization, and
    ``N`` workers of ``N`` threads each oversubscribe ``N`` cores: measured on 2 cores, the
    serial contract took 28.1 s of CPU with 2 threads and 18.8 s with 1. Workers read the
    environment when they import torch; this process is already running, so it is set directly.
    The verdict does not depend on it (no contract tensor reaches a parallel kernel's grain).
    """
    import torch

    saved = {key: os.environ.get(key) for key in _THREAD_ENV}
    threads = torch.get_num_threads()
    os.environ.update({key: "1" for key in _THREAD_ENV})
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class _Baseline:
    """The baselines the differential rules compare against, as the gate resolved them."""

    loss: LossTarget | None = None
    metrics: MetricsTarget | None = None
    path: str | None = None
    label: str = ""

    def args(self) -> list[str]:
        out = []
        if self.loss is not None:
            out += ["--robustness-baseline", self.loss.spec]
        if self.metrics is not None:
            out += ["--robustness-baseline-metrics", self.metrics.spec]
        if self.path is not None:
            out += ["--robustness-baseline-path", self.path]
        return out


def _resolve_baseline(
    options: argparse.Namespace,
    loss: LossTarget,
    metrics: MetricsTarget,
    stack: contextlib.ExitStack,
) -> _Baseline:
    """Load (and for ``--baseline-ref`` first materialize) the baselines; cleanup on ``stack``.

    Raises:
        HarnessUsageError: for a baseline that cannot be made or imported (one line).
    """
    if options.baseline_ref is None:
        base_loss = load_loss_target(options.baseline) if options.baseline else None
        base_metrics = (
            load_metrics_target(options.baseline_metrics) if options.baseline_metrics else None
        )
        return _Baseline(base_loss, base_metrics)
    loss_spec = options.baseline or loss.spec
    metrics_spec = options.baseline_metrics or metrics.spec
    if not metrics.enabled and not options.baseline_metrics:
        metrics_spec = loss_spec  # loss-only: nothing else to materialize
    for spec, kind in ((loss_spec, "loss"), (metrics_spec, "metrics")):
        module = spec.partition(":")[0]
        if not module or module.startswith("."):
            raise HarnessUsageError(f"--baseline-ref: bad {kind} module {spec!r}")
    at = stack.enter_context(
        materialized(
            options.baseline_ref, [loss_spec.partition(":")[0], metrics_spec.partition(":")[0]]
        )
    )
    base_loss = load_loss_target(at.spec(loss_spec))
    base_metrics = load_metrics_target(at.spec(metrics_spec)) if metrics_spec != loss_spec else None
    label = f"{options.baseline_ref} ({at.commit[:10]})"
    return _Baseline(base_loss, base_metrics, str(at.path), label)


def _pytest_args(options: argparse.Namespace, loss_spec: str, metrics_spec: str) -> list[str]:
    args = [
        "-c",
        str(_GATE_INI),
        "--rootdir",
        os.getcwd(),
        "--pyargs",
        "robustness.contract",
        f"--hypothesis-profile={options.profile}",
        "--robustness-target",
        loss_spec,
        "--robustness-metrics",
        metrics_spec,
        "--robustness-device",
        options.device,
        "--robustness-repro-dir",
        str(options.repro_dir),
        "-q",
        "--no-header",
        "--no-summary",
        "--tb=no",
    ]
    if options.workers:
        # loadgroup: tests marked xdist_group (the process-group rules) share one worker.
        args += ["-n", str(options.workers), "--dist", "loadgroup"]
    if options.rules:
        args += ["--robustness-rules", options.rules]
    if options.skip_rules:
        args += ["--robustness-skip-rules", options.skip_rules]
    if options.maxfail:
        args += ["--maxfail", str(options.maxfail)]
    if options.junitxml:
        args += ["--junitxml", str(options.junitxml)]
    if options.regress_only:
        args += ["--robustness-regress-only", options.regress_only]
    if options.regress_skip:
        args += ["--robustness-regress-skip", options.regress_skip]
    return args


@dataclass
class _Row:
    """One rule × term row of the verdict table."""

    rule: str
    term: str
    status: str  # pass | FAIL | known | skipped
    tests: int
    skipped: list[str]
    examples: int
    seconds: float
    cause: int | None = None  # 1-based index into the causes, for a failing row

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule, self.term)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _examples_of(outcome: TestOutcome) -> int:
    # A plain (non-Hypothesis) test that passed is one example; a skipped one is none. A
    # failed test counts what Hypothesis reported (it reports nothing for a failure).
    if outcome.outcome == "passed" and not outcome.hypothesis:
        return max(outcome.examples, 1)
    return outcome.examples if outcome.outcome != "skipped" else 0


def _rows(outcomes: Sequence[TestOutcome]) -> list[_Row]:
    """Group test outcomes into rule × term rows; a row fails if any of its tests failed.

    A row passes only if its tests ran at least one example: one whose tests were all skipped,
    or ran none, is ``skipped`` (with the reason), never ``pass``.
    """
    grouped: dict[tuple[str, str], list[TestOutcome]] = {}
    for outcome in outcomes:
        grouped.setdefault((outcome.rule, outcome.term), []).append(outcome)
    rows = []
    for (rule, term), members in sorted(grouped.items(), key=lambda kv: _rule_key(kv[0])):
        examples = sum(_examples_of(m) for m in members)
        skipped = sorted({f"{m.device}: {m.reason}" for m in members if m.outcome == "skipped"})
        if any(m.outcome == "failed" for m in members):
            status = "FAIL"
        elif examples:
            status = "pass"
        else:
            status = "skipped"
            if not skipped:
                skipped = ["no examples ran"]
        rows.append(
            _Row(
                rule=rule,
                term=term,
                status=status,
                tests=len(members),
                skipped=skipped,
                examples=examples,
                seconds=round(sum(m.seconds for m in members), 3),
            )
        )
    return rows


def _rule_key(key: tuple[str, str]) -> tuple[int, str, str]:
    rule, term = key
    return (0 if rule.startswith("C-") else 1, rule, term)


@dataclass
class _Verdict:
    """Rows, their causes, and the run judged against the known file."""

    rows: list[_Row]
    failures: list[TestOutcome]
    causes: list[Cause]
    ratchet: Ratchet

    @property
    def failing(self) -> dict[tuple[str, str], str]:
        """Each failing row (new or known) -> its cause's summary."""
        return {row: cause.summary for cause in self.causes for row in cause.rows}

    @property
    def ran(self) -> list[tuple[str, str]]:
        return [r.key for r in self.rows if r.status != "skipped"]

    @property
    def failed(self) -> bool:
        return bool(self.ratchet.new or self.ratchet.fixed)

    @property
    def checked(self) -> bool:
        return any(r.status != "skipped" for r in self.rows)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)


def _judge(outcomes: Sequence[TestOutcome], known: Sequence[KnownEntry]) -> _Verdict:
    """Rows, causes (failures read in table order) and the ratchet against ``known``."""
    rows = _rows(outcomes)
    order = {r.key: i for i, r in enumerate(rows)}
    failures = sorted(
        (o for o in outcomes if o.outcome == "failed"),
        key=lambda o: (order[(o.rule, o.term)], o.nodeid),
    )
    causes = group_causes(failures)
    verdict = _Verdict(rows, failures, causes, compare(known, {}, []))
    verdict.ratchet = compare(known, verdict.failing, verdict.ran)
    index = {row: i for i, cause in enumerate(causes, start=1) for row in cause.rows}
    for row in rows:
        row.cause = index.get(row.key)
        if row.key in verdict.ratchet.known:
            row.status = "known"
    return verdict


def _examples_cell(row: _Row) -> str:
    # Hypothesis reports no statistics for a test that failed: say so rather than print 0.
    if row.status in ("FAIL", "known") and not row.examples:
        return "(failed)"
    return str(row.examples)


def _table(rows: Sequence[_Row]) -> list[str]:
    header = ("rule", "term", "verdict", "cause", "examples", "seconds")
    body = [
        (
            r.rule,
            r.term,
            r.status
            + (f" ({len(r.skipped)} skipped)" if r.skipped and r.status != "skipped" else ""),
            str(r.cause) if r.cause else "",
            _examples_cell(r),
            f"{r.seconds:.2f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in body
    ]
    return lines


def _skip_footer(rows: Sequence[_Row]) -> list[str]:
    """Each skip reason once, with how many rows it touched (not once per row)."""
    touched: dict[str, int] = {}
    for row in rows:
        for reason in row.skipped:
            touched[reason] = touched.get(reason, 0) + 1
    return [
        f"skipped in {n} row{'s' if n != 1 else ''}: {reason}"
        for reason, n in sorted(touched.items())
    ]


def _cause_labels(verdict: _Verdict) -> list[str]:
    labels = []
    for cause in verdict.causes:
        known = sum(row in verdict.ratchet.known for row in cause.rows)
        labels.append(
            "" if not known else "known" if known == len(cause.rows) else f"{known} known"
        )
    return labels


def _failure_lines(failure: TestOutcome) -> list[str]:
    lines = [f"FAILED {failure.nodeid}", failure.message]
    if failure.repro:
        lines.append(f"  replay: python -m robustness replay {failure.repro}")
    return lines


def _render(verdict: _Verdict) -> str:
    """The verdict as text: causes, table, skip reasons, failures, fixed entries.

    Each cause with a new (not known) row shows one representative failure; the rest of its
    failures are folded to one line each.
    """
    lines: list[str] = []
    if verdict.causes:
        lines += [render_causes(verdict.causes, labels=_cause_labels(verdict)), ""]
    lines += _table(verdict.rows)
    footer = _skip_footer(verdict.rows)
    if footer:
        lines += ["", *footer]
    for i, cause in enumerate(verdict.causes, start=1):
        if all(row in verdict.ratchet.known for row in cause.rows):
            continue  # recorded in the known file: listed above, not repeated
        first, *rest = cause.failures
        assert isinstance(first, TestOutcome)
        lines += ["", f"cause {i}: {cause.summary}", *_failure_lines(first)]
        if rest:
            lines.append(
                f"  and {len(rest)} more failure{'s' if len(rest) != 1 else ''} of cause {i}:"
            )
            for other in rest:
                assert isinstance(other, TestOutcome)
                headline = other.message.splitlines()[0] if other.message else "failed"
                replay = f" (replay {other.repro})" if other.repro else ""
                lines.append(f"    {headline}{replay}")
    for entry in verdict.ratchet.fixed:
        lines += ["", f"fixed: remove it: {entry.rule} {entry.term}: {entry.cause}"]
    if verdict.ratchet.fixed:
        lines.append(
            "  (no longer fails: rerun with --write-known to take it out of the known file)"
        )
    return "\n".join(lines)


@dataclass
class _PytestRun:
    """What pytest did: its exit code, the collected outcomes, its own output, wall time."""

    code: int
    collector: _Collector
    output: str
    wall: float


def _run_pytest(
    options: argparse.Namespace,
    loss: LossTarget,
    metrics: MetricsTarget,
    baseline: _Baseline,
    extra: Sequence[str] = (),
) -> _PytestRun:
    import pytest

    collector = _Collector()
    started = time.perf_counter()
    # pytest's own progress lines are noise next to the gate's table: keep them, and show
    # them only when the run itself broke (they then hold pytest's explanation).
    pytest_output = io.StringIO()
    with (
        _hermetic_plugins(options.workers),
        _single_threaded_torch(),
        profile_kept(),
        contextlib.redirect_stdout(pytest_output),
    ):
        code = pytest.main(
            _pytest_args(options, loss.spec, metrics.spec) + baseline.args() + list(extra),
            plugins=[collector],
        )
    return _PytestRun(int(code), collector, pytest_output.getvalue(), time.perf_counter() - started)


def _run_problem(run: _PytestRun) -> int | None:
    """The exit status for a run that could not give a verdict (printed why), else None."""
    import pytest

    broke = run.collector.errors or run.code in (
        pytest.ExitCode.INTERNAL_ERROR,
        pytest.ExitCode.INTERRUPTED,
    )
    if broke or run.code == pytest.ExitCode.USAGE_ERROR:
        print(run.output, end="", file=sys.stderr)
    if run.code == pytest.ExitCode.USAGE_ERROR:
        print("robustness gate: error: pytest rejected the options (see above)", file=sys.stderr)
        return EXIT_USAGE
    if broke:
        for error in run.collector.errors:
            print(f"robustness gate: {error}", file=sys.stderr)
        print(f"robustness gate: the run broke (pytest exit {run.code})", file=sys.stderr)
        return EXIT_BROKEN
    if run.code == pytest.ExitCode.NO_TESTS_COLLECTED or not run.collector.outcomes:
        print("robustness gate: error: no contract tests selected (check --rules)", file=sys.stderr)
        return EXIT_USAGE
    return None


def _nothing_checked_line(verdict: _Verdict) -> str:
    reasons = sorted({reason for row in verdict.rows for reason in row.skipped})
    n = len(verdict.rows)
    return (
        f"robustness gate: nothing was checked: all {n} selected rule×term row"
        f"{'s were' if n != 1 else ' was'} skipped ({'; '.join(reasons)})"
    )


def _summary(
    options: argparse.Namespace,
    verdict: _Verdict,
    run: _PytestRun,
    loss: LossTarget,
    metrics: MetricsTarget,
    baseline: _Baseline,
    selection: RegressSelection,
    plan: changes.ChangePlan | None,
) -> str:
    examples = sum(r.examples for r in verdict.rows)
    counts = f"{verdict.count('pass')} pass, {verdict.count('FAIL')} FAIL, "
    if verdict.ratchet.known or verdict.ratchet.fixed or options.known_entries:
        counts += f"{verdict.count('known')} known, {len(verdict.ratchet.fixed)} fixed, "
    summary = (
        f"robustness gate: {'FAILED' if verdict.failed else 'passed'} — {len(verdict.rows)} "
        f"rule×term rows: {counts}{verdict.count('skipped')} skipped; "
        f"{examples} examples in {run.wall:.1f} s (profile {options.profile}, "
        f"{options.workers or 'no'} workers, device {options.device})\n"
        f"  target  {loss.spec}\n  metrics {metrics.spec}"
    )
    if options.known_path.exists() or options.write_known:
        summary += f"\n  known   {options.known_path} ({len(options.known_entries)} entries)"
    if baseline.loss or baseline.metrics:
        source = f" at {baseline.label}" if baseline.label else ""
        summary += "".join(
            f"\n  {what} {spec}{source}"
            for what, spec in (
                ("baseline", options.baseline or (loss.spec if baseline.label else None)),
                (
                    "baseline metrics",
                    options.baseline_metrics or (metrics.spec if baseline.label else None),
                ),
            )
            if spec
        )
        if not selection.everything:
            summary += f"\n  compared {selection.describe()}"
    if plan is not None:
        summary += "".join(f"\n{line}" for line in plan.describe())
    return summary


def _write_report(
    options: argparse.Namespace,
    verdict: _Verdict,
    status: int,
    run: _PytestRun,
    loss: LossTarget,
    metrics: MetricsTarget,
    baseline: _Baseline,
    plan: changes.ChangePlan | None,
) -> None:
    outcomes = list(run.collector.outcomes.values())
    options.report_json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "verdict": {EXIT_OK: "pass", EXIT_NOTHING_CHECKED: "nothing checked"}.get(status, "fail"),
        "exit_status": status,
        "target": loss.spec,
        "metrics": metrics.spec,
        "baseline": baseline.loss.spec if baseline.loss else None,
        "baseline_metrics": baseline.metrics.spec if baseline.metrics else None,
        "baseline_ref": options.baseline_ref,
        "profile": options.profile,
        "device": options.device,
        "workers": options.workers,
        "wall_seconds": round(run.wall, 3),
        "unchanged": plan.unchanged if plan is not None else {},
        "examples": sum(r.examples for r in verdict.rows),
        "causes": [cause.to_json() for cause in verdict.causes],
        "known": {
            "path": str(options.known_path),
            "entries": len(options.known_entries),
            "known_rows": [
                {"rule": rule, "term": term} for rule, term in sorted(verdict.ratchet.known)
            ],
            "fixed": [
                {"rule": e.rule, "term": e.term, "cause": e.cause} for e in verdict.ratchet.fixed
            ],
        },
        "rows": [row.to_json() for row in verdict.rows],
        "tests": [asdict(o) for o in outcomes],
    }
    options.report_json.write_text(json.dumps(report, indent=2) + "\n")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options: command line over environment over ``[tool.robustness]`` over defaults.

    Raises:
        HarnessUsageError: the ``[tool.robustness]`` table is malformed (robustness.config).
    """
    parser = build_parser()
    parser.set_defaults(**gate_defaults(load_config()))
    options = parser.parse_args(argv)
    options.profile = options.profile or _default_profile()
    for name, env in (
        ("baseline", BASELINE_ENV),
        ("baseline_metrics", BASELINE_METRICS_ENV),
        ("regress_only", REGRESS_ONLY_ENV),
        ("regress_skip", REGRESS_SKIP_ENV),
    ):
        setattr(options, name, getattr(options, name) or os.environ.get(env) or None)
    options.known_path = Path(options.known) if options.known else Path(DEFAULT_KNOWN_FILE)
    return options


def run_gate(argv: Sequence[str] | None = None) -> int:
    """Run the gate with command-line ``argv``; return the exit status."""
    try:
        options = _parse(argv)
    except HarnessUsageError as exc:
        print(f"robustness gate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with contextlib.ExitStack() as stack:
        try:
            options.known_entries = load_known(options.known_path)
            loss = load_loss_target(options.target)
            metrics = load_metrics_target(options.metrics, allow_none=True)
            selection = RegressSelection.parse(options.regress_only, options.regress_skip)
            baseline = _resolve_baseline(options, loss, metrics, stack)
            changes.check_changed_options(options)
            plan = (
                changes.plan_changes(
                    loss,
                    metrics,
                    profile=options.profile,
                    device=options.device,
                    state=options.state,
                    since=options.since,
                )
                if options.changed
                else None
            )
        except HarnessUsageError as exc:
            print(f"robustness gate: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if plan is not None and not plan.run:
            print(plan.nothing_line())
            return EXIT_OK
        if options.workers is None:
            few = plan is not None and changes.serial_is_faster(plan.run, profile=options.profile)
            options.workers = 0 if few else min(2, os.cpu_count() or 1)
        terms = ["--robustness-terms", ",".join(plan.run)] if plan is not None else []
        run = _run_pytest(options, loss, metrics, baseline, terms)
    problem = _run_problem(run)
    if problem is not None:
        return problem

    outcomes = list(run.collector.outcomes.values())
    verdict = _judge(outcomes, options.known_entries)
    if not verdict.checked:
        if options.report_json:
            _write_report(
                options, verdict, EXIT_NOTHING_CHECKED, run, loss, metrics, baseline, plan
            )
        print(_nothing_checked_line(verdict), file=sys.stderr)
        return EXIT_NOTHING_CHECKED
    wrote = ""
    if options.write_known:
        entries = rewrite(options.known_entries, verdict.failing, verdict.ran)
        write_known(options.known_path, entries)
        options.known_entries = entries
        verdict = _judge(outcomes, entries)
        wrote = f"robustness gate: wrote {len(entries)} known violation(s) to {options.known_path}"
    status = EXIT_VIOLATION if verdict.failed else EXIT_OK
    if not options.rules and not (options.maxfail and verdict.failures):
        changes.record_passes(
            plan,
            loss,
            metrics,
            # A known failure is still a failure: its term must run again after a change.
            [
                {"term": r.term, "status": "FAIL" if r.status == "known" else r.status}
                for r in verdict.rows
            ],
            profile=options.profile,
            device=options.device,
            state=options.state,
        )
    if not options.quiet:
        print(_render(verdict))
        print()
    print(_summary(options, verdict, run, loss, metrics, baseline, selection, plan))
    if wrote:
        print(wrote)
    if options.report_json:
        _write_report(options, verdict, status, run, loss, metrics, baseline, plan)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m robustness gate``."""
    return run_gate(argv)
