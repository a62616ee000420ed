"""Run the contract on mutants: worker processes, each reusing one Python process.

Each worker is a ``spawn``-ed, non-daemonic process (the contract's distributed rules start
process groups of their own) that imports torch, pytest and the contract suite once, then
runs task after task in-process with ``pytest.main``: the same packaged suite, ``gate.ini``
and plugins the gate runs, so a test's verdict is the gate's verdict.

1. The *original* (unmutated) target runs first, split over the workers. Every test records
   which lines of the mutated files it executed (a global ``sys.settrace`` hook that
   returns a line tracer only for frames of those files, so other code gets no line
   events) and whether it ran code in child processes.
2. Each *mutant* then runs only the tests that execute one of its lines (module- and
   class-level mutants: every test that touches the file; a test that also runs code in
   child processes, where no tracer runs, counts as executing all of every file it touches
   in this process), minus the tests the original
   does not pass and every test of a rule the original fails, in a fixed order with the
   cheap rules that kill most first (:data:`RULE_ORDER`), the tests that killed other
   mutants of the same function before them (:class:`KillOrder`), and stops at the first
   failure (``-x``), under the profile without shrinking (:func:`mutant_profile`). A test
   that never executes the mutated code behaves exactly as on the original (the
   Hypothesis profiles are derandomized), so skipping it changes no verdict.

A mutant that exceeds its time limit is stopped by ``SIGALRM`` inside the worker; a worker
that does not answer even then is terminated and replaced (status ``timeout`` either way).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from robustness.mutate.generation import Mutant

__all__ = [
    "RULE_ORDER",
    "KillOrder",
    "Outcome",
    "Result",
    "RunConfig",
    "TestRecord",
    "WorkerPool",
    "select_tests",
]

#: Rules in the order a mutant meets them: cheap, often-killing value rules first, the
#: training and process-group rules (seconds per example) last. Rules not listed (new ones)
#: run after the listed value rules and before the slow tail.
RULE_ORDER = (
    "C-SCALAR-1",
    "C-REF-1",
    "C-METRIC-REF-1",
    "C-SHAPE-1",
    "C-INPUT-1",
    "C-METRIC-INPUT-1",
    "C-MASK-1",
    "C-EMPTY-1",
    "C-NONFINITE-1",
    "C-INVARIANT-1",
    "C-PAD-1",
    "C-RAGGED-1",
    "C-METRIC-EDGE-1",
    "C-MASK-2",
    "C-PURE-1",
    "C-FINITE-1",
    "C-FINITE-2",
    "C-DIST-1",
    "C-WEIGHT-1",
    "C-DTYPE-1",
    "C-STREAM-1",
    "C-STREAM-2",
    "C-STREAM-3",
    "C-STREAM-4",
    "C-DEVICE-1",
)
_SLOW_TAIL = ("C-WEIGHTS-1", "C-DDP-1", "C-DDP-2")
_GATE_INI = Path(__file__).resolve().parent.parent / "gate.ini"
_PLUGINS = "_hypothesis_pytestplugin,robustness.plugin"
#: Seconds a worker gets beyond a mutant's limit before it is terminated from outside.
_GRACE = 60.0
#: Prefix of the profile a mutant runs under: the chosen profile without shrinking.
_MUTANT_PROFILE = "robustness-mutate-"


def mutant_profile(profile: str) -> str:
    """Register and name ``profile`` without its shrink and explain phases (in a worker).

    A mutant needs a verdict, not a minimal example: Hypothesis finds the same first failing
    example with or without shrinking (generation does not depend on it, and the profiles
    are derandomized), but shrinking it costs many more runs of the test. The original keeps
    the profile as chosen, so its failures are reported minimal.
    """
    from hypothesis import Phase, settings

    import robustness.profiles  # noqa: F401  (registers the contract's profiles)

    base = settings.get_profile(profile)
    phases = tuple(p for p in base.phases if p not in (Phase.shrink, Phase.explain))
    name = _MUTANT_PROFILE + profile
    settings.register_profile(name, settings(base, phases=phases))
    return name


def rule_rank(rule: str) -> int:
    """Position of ``rule`` in the run order (see :data:`RULE_ORDER`)."""
    if rule in RULE_ORDER:
        return RULE_ORDER.index(rule)
    if rule in _SLOW_TAIL:
        return len(RULE_ORDER) + 1 + _SLOW_TAIL.index(rule)
    return len(RULE_ORDER)


@dataclass(frozen=True)
class RunConfig:
    """What every worker needs to run the contract (picklable)."""

    loss: str
    metrics: str
    gathered: str | None
    profile: str
    rules: str | None
    traced_files: tuple[str, ...]
    cwd: str


@dataclass
class TestRecord:
    """One contract test on the original target."""

    nodeid: str
    rule: str
    index: int
    outcome: str = "passed"
    seconds: float = 0.0
    covered: set[tuple[str, str]] = field(default_factory=set)
    lines: set[tuple[str, int]] = field(default_factory=set)
    children: bool = False


@dataclass
class Outcome:
    """What a pytest run in a worker found."""

    records: dict[str, TestRecord] = field(default_factory=dict)
    first_failure: tuple[str, str, str] | None = None  # (nodeid, rule, message)
    exit_code: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: str = ""


@dataclass
class Result:
    """The verdict on one mutant."""

    status: str  # killed | survived | timeout | invalid
    rule: str = ""
    test: str = ""
    detail: str = ""
    seconds: float = 0.0
    tests_run: int = 0
    cpu_seconds: float = 0.0


# --------------------------------------------------------------------------- in the worker


def _enclosing(qualname: str) -> str:
    """``f.<locals>.<listcomp>`` -> ``f``: comprehensions and lambdas belong to their def."""
    parts = qualname.split(".")
    while len(parts) > 1 and parts[-1].startswith("<"):
        parts.pop()
        if parts and parts[-1] == "<locals>":
            parts.pop()
    return ".".join(parts)


class _Session:
    """A pytest plugin: keep and order the chosen tests, record outcomes (and coverage)."""

    def __init__(self, keep: Sequence[str] | None, traced: frozenset[str]) -> None:
        self.keep = list(keep) if keep is not None else None
        self.traced = traced
        self.outcome = Outcome()

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        for index, item in enumerate(items):
            marker = item.get_closest_marker("rule")
            rule = str(marker.args[0]) if marker and marker.args else "-"
            self.outcome.records[item.nodeid] = TestRecord(item.nodeid, rule, index)
        if self.keep is None:
            return
        by_id = {item.nodeid: item for item in items}
        kept = [by_id[n] for n in self.keep if n in by_id]
        dropped = [item for item in items if item.nodeid not in set(self.keep)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept

    pytest_collection_modifyitems.trylast = True  # type: ignore[attr-defined]

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Iterator[None]:
        record = self.outcome.records.get(item.nodeid)
        if not self.traced or record is None:
            yield
            return
        covered, lines = record.covered, record.lines
        traced = self.traced

        def line_tracer(frame: FrameType, event: str, arg: object) -> Any:
            if event == "line":
                lines.add((frame.f_code.co_filename, frame.f_lineno))
            return line_tracer

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            code = frame.f_code
            if code.co_filename not in traced:
                return None  # no line events outside the mutated files
            covered.add((code.co_filename, _enclosing(code.co_qualname)))
            lines.add((code.co_filename, frame.f_lineno))
            return line_tracer

        sys.settrace(tracer)
        try:
            yield
        finally:
            sys.settrace(None)
            record.children = bool(mp.active_children())

    pytest_runtest_protocol.hookwrapper = True  # type: ignore[attr-defined]

    def pytest_runtest_logreport(self, report: Any) -> None:
        record = self.outcome.records.get(report.nodeid)
        if record is None:
            return
        record.seconds += report.duration
        if report.failed:
            record.outcome = "failed"
            if self.outcome.first_failure is None:
                props = dict(report.user_properties)
                message = str(props.get("violation") or _short(report))
                self.outcome.first_failure = (
                    report.nodeid,
                    record.rule,
                    message.strip().splitlines()[0] if message.strip() else "failed",
                )
        elif report.skipped and record.outcome != "failed":
            record.outcome = "skipped"


def _short(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    return str(report.longrepr or "failed")


def _pytest(
    config: RunConfig,
    loss: str,
    metrics: str,
    repro_dir: Path,
    keep: Sequence[str] | None,
    *,
    traced: bool,
    stop_first: bool,
    select: Callable[[list[str]], list[str]] | None = None,
    profile: str | None = None,
) -> Outcome:
    import pytest

    args = [
        "-c",
        str(_GATE_INI),
        "--rootdir",
        config.cwd,
        "--pyargs",
        "robustness.contract",
        f"--hypothesis-profile={profile or config.profile}",
        "--robustness-target",
        loss,
        "--robustness-metrics",
        metrics,
        "--robustness-device",
        "cpu",
        "--robustness-repro-dir",
        str(repro_dir),
        "-q",
        "--no-header",
        "--no-summary",
        "--tb=no",
        "-p",
        "no:cacheprovider",
    ]
    if config.rules:
        args += ["--robustness-rules", config.rules]
    if stop_first:
        args.append("-x")
    session = _Session(keep, frozenset(config.traced_files) if traced else frozenset())
    if select is not None:
        session.keep = None
        original = session.pytest_collection_modifyitems

        def choose(config: Any, items: list[Any]) -> None:
            original(config, items)
            wanted = set(select([item.nodeid for item in items]))
            dropped = [item for item in items if item.nodeid not in wanted]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item.nodeid in wanted]

        choose.trylast = True  # type: ignore[attr-defined]
        session.pytest_collection_modifyitems = choose  # type: ignore[method-assign]
    started, cpu = time.perf_counter(), time.process_time()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = pytest.main(args, plugins=[session])
    session.outcome.exit_code = int(code)
    session.outcome.seconds = time.perf_counter() - started
    session.outcome.cpu_seconds = time.process_time() - cpu
    if int(code) not in (0, 1, 5) and session.outcome.first_failure is None:
        session.outcome.error = sink.getvalue().strip()[-2000:]
    return session.outcome


class _Timeout(KeyboardInterrupt):
    """Raised by SIGALRM inside a worker: pytest and Hypothesis let it through."""


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout()


def _run_mutant(
    config: RunConfig, workdir: Path, mutant: Mutant, source: str, keep: list[str], limit: float
) -> Result:
    from robustness.mutate.loading import loaded_mutant
    from robustness.target import GATHERED_LOSS_ENV, load_loss_target, load_metrics_target

    started = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(limit, 1.0))
    saved = os.environ.get(GATHERED_LOSS_ENV)
    try:
        with loaded_mutant(mutant.module, mutant.file, source, workdir, mutant.id) as package:
            loss, metrics = package.spec(config.loss), package.spec(config.metrics)
            try:
                load_loss_target(loss)
                load_metrics_target(metrics)
            except _Timeout:
                raise
            except Exception as exc:
                cause = exc.__cause__ or exc
                return Result(
                    "invalid",
                    detail=f"does not import: {type(cause).__name__}: {cause}".splitlines()[0],
                    seconds=time.perf_counter() - started,
                )
            if config.gathered:
                os.environ[GATHERED_LOSS_ENV] = package.spec(config.gathered)
            outcome = _pytest(
                config,
                loss,
                metrics,
                workdir / "repros",
                keep,
                traced=False,
                stop_first=True,
                profile=mutant_profile(config.profile),
            )
    except _Timeout:
        return Result(
            "timeout",
            detail=f"still running after {limit:.0f} s",
            seconds=time.perf_counter() - started,
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if saved is None:
            os.environ.pop(GATHERED_LOSS_ENV, None)
        else:
            os.environ[GATHERED_LOSS_ENV] = saved
        shutil.rmtree(workdir / "repros", ignore_errors=True)
    seconds = time.perf_counter() - started
    ran = sum(1 for r in outcome.records.values() if r.seconds > 0)
    if outcome.first_failure is not None:
        test, rule, message = outcome.first_failure
        return Result("killed", rule, test, message, seconds, ran)
    if outcome.error:
        return Result(
            "invalid",
            detail=f"pytest exit {outcome.exit_code}: " + outcome.error.splitlines()[-1],
            seconds=seconds,
        )
    return Result("survived", seconds=seconds, tests_run=ran)


def _worker_main(conn: mpc.Connection, config: RunConfig) -> None:
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.environ["PYTEST_PLUGINS"] = _PLUGINS
    os.chdir(config.cwd)
    workdir = Path(tempfile.mkdtemp(prefix="robustness-mutate-"))
    sys.path.insert(0, str(workdir))
    try:
        while True:
            try:
                task = conn.recv()
            except EOFError:
                return
            if task is None:
                return
            kind = task[0]
            try:
                if kind == "original":
                    _, shard, shards = task

                    def stripe(ids: list[str], s: int = shard, n: int = shards) -> list[str]:
                        return ids[s::n]

                    outcome = _pytest(
                        config,
                        config.loss,
                        config.metrics,
                        workdir / "repros",
                        None,
                        traced=True,
                        stop_first=False,
                        select=stripe,
                    )
                    conn.send(("ok", outcome))
                else:
                    _, mutant, source, keep, limit = task
                    cpu = time.process_time()
                    result = _run_mutant(config, workdir, mutant, source, keep, limit)
                    result.cpu_seconds = time.process_time() - cpu
                    conn.send(("ok", result))
            except BaseException:
                conn.send(("error", traceback.format_exc()))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- in the parent


@dataclass
class _Worker:
    process: Any
    conn: mpc.Connection
    task: int | None = None
    deadline: float = 0.0


class WorkerPool:
    """``size`` worker processes; :meth:`run` hands out tasks and gathers the answers."""

    def __init__(self, size: int, config: RunConfig) -> None:
        self._context = mp.get_context("spawn")
        self._config = config
        self._workers = [self._start() for _ in range(max(size, 1))]

    def _start(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child, self._config), daemon=False
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    def close(self) -> None:
        """Stop every worker (terminate those that do not leave in time)."""
        for worker in self._workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                worker.conn.send(None)
        for worker in self._workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        tasks: Sequence[tuple[Any, ...]],
        limits: Sequence[float | None],
        prepare: Callable[[int, tuple[Any, ...]], tuple[Any, ...]] | None = None,
    ) -> Iterator[tuple[int, str, Any]]:
        """Yield ``(task index, "ok" | "error" | "timeout" | "crash", value)`` as tasks finish.

        ``limits[i]`` (seconds, ``None`` for none) bounds task ``i`` from outside;
        ``prepare(i, task)``, when given, rewrites a task just before it is sent (so it can
        use what the tasks before it found).
        """
        pending = list(range(len(tasks)))
        pending.reverse()
        busy = 0
        while pending or busy:
            for worker in self._workers:
                if worker.task is None and pending:
                    index = pending.pop()
                    worker.task = index
                    limit = limits[index]
                    worker.deadline = (
                        time.monotonic() + limit + _GRACE if limit is not None else float("inf")
                    )
                    task = tasks[index]
                    worker.conn.send(task if prepare is None else prepare(index, task))
                    busy += 1
            ready = mpc.wait([w.conn for w in self._workers if w.task is not None], timeout=1.0)
            for position, worker in enumerate(self._workers):
                if worker.task is None:
                    continue
                index = worker.task
                if worker.conn in ready:
                    try:
                        kind, value = worker.conn.recv()
                    except (EOFError, OSError):
                        kind, value = "crash", f"worker exited with {worker.process.exitcode}"
                        self._replace(position)
                    else:
                        worker.task = None
                    busy -= 1
                    yield index, kind, value
                elif time.monotonic() > worker.deadline:
                    self._replace(position)
                    busy -= 1
                    yield index, "timeout", "worker terminated"

    def _replace(self, position: int) -> None:
        old = self._workers[position]
        if old.process.is_alive():
            old.process.terminate()
            old.process.join(timeout=5)
            if old.process.is_alive():
                old.process.kill()
        self._workers[position] = self._start()


class KillOrder:
    """Run first the tests that killed other mutants of the same function, most kills first.

    Mutants are run in file order, so the mutants of one function come one after another;
    a test that caught one of them is the likeliest to catch the next, and a killed mutant
    stops at its first failing test. Ties keep the :func:`select_tests` order (cheap rules
    first). Reordering never changes a verdict: the same tests run, each derandomized.
    """

    def __init__(self) -> None:
        self._kills: dict[tuple[str, str, str], int] = {}

    def record(self, mutant: Mutant, test: str) -> None:
        """``test`` killed ``mutant``."""
        key = (mutant.file, mutant.function, test)
        self._kills[key] = self._kills.get(key, 0) + 1

    def order(self, mutant: Mutant, tests: Sequence[str]) -> list[str]:
        """``tests`` (in :func:`select_tests` order) with the killers of its function first."""
        kills = self._kills
        ranked = sorted(
            enumerate(tests),
            key=lambda item: (-kills.get((mutant.file, mutant.function, item[1]), 0), item[0]),
        )
        return [test for _, test in ranked]


def select_tests(
    mutant: Mutant,
    original: dict[str, TestRecord],
    file_path: str,
    excluded_rules: frozenset[str],
) -> list[str]:
    """The tests to run on ``mutant``, in run order (see the module docstring)."""
    whole_file = mutant.scope != "function"  # module or class body: runs at import
    chosen = []
    for record in original.values():
        if record.outcome != "passed" or record.rule in excluded_rules:
            continue
        files = {path for path, _ in record.covered}
        if file_path not in files:
            continue
        if record.children:
            chosen.append(record)  # it also ran code in child processes, where no tracer runs
            continue
        if whole_file or any(
            (file_path, line) in record.lines for line in range(mutant.line, mutant.end_line + 1)
        ):
            chosen.append(record)
    chosen.sort(key=lambda r: (rule_rank(r.rule), r.index))
    return [r.nodeid for r in chosen]
