"""The mutant corpus proves the gate: every mutant dies by its declared rule, in a new process.

Each kill runs ``python -m robustness gate`` as ``selftest`` does (the ``ci`` profile,
``--rules <declared rule> --maxfail 1 --workers 0 --device cpu``) and reads the verdict from
the gate's own JSON report, not from ``selftest``'s parsing of it. The gate runs are started
together, two at a time, the first time a test needs one (only for the mutants the session
selected); Hypothesis stops at the first failing example, so a run lasts as long as the
search for its first failure. A repro file written by one of those failures must replay in
yet another process: still failing against the mutant, passing against ``aam``.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import robustness
from robustness.mutants import CORPUS, Mutant, by_name
from robustness.selftest import Kill, _render, gate_command, run_selftest
from robustness.target import (
    DEFAULT_LOSS_TARGET,
    DEFAULT_METRICS_TARGET,
    load_loss_target,
    load_metrics_target,
)

PROFILE = "ci"
# Each gate run gets this long; the slowest kill takes well under a minute.
TIMEOUT_S = 600
# Mutants whose repro files the replay tests use (one per kind of target).
REPLAYED = {"loss": "count_zero_over_zero", "metrics": "r2_naive_variance"}
CONTRACT_IDS = frozenset(
    re.findall(
        r"^- \*\*(C-[A-Z0-9-]+)\*\*",
        Path(robustness.__file__).with_name("CONTRACT.md").read_text(),
        flags=re.M,
    )
)


@dataclass(frozen=True)
class GateRun:
    """One gate run on one mutant: its exit status, JSON report and console output."""

    mutant: Mutant
    exit_status: int
    report: dict[str, Any] | None
    output: str
    seconds: float

    def failed(self) -> list[dict[str, Any]]:
        """The report's failing contract tests."""
        tests = self.report["tests"] if self.report else []
        return [t for t in tests if t["outcome"] == "failed"]

    def explain(self) -> str:
        return (
            f"gate on {self.mutant.name} exited {self.exit_status} after {self.seconds:.1f} s\n"
            + self.output[-3000:]
        )


def _run_gate(mutant: Mutant, workdir: Path) -> GateRun:
    report = workdir / f"{mutant.name}.json"
    command = gate_command(
        target=mutant.target,
        metrics=mutant.metrics,
        profile=PROFILE,
        report=report,
        rules=mutant.rule,
        maxfail=1,
        workers=0,
        repro_dir=workdir / "repros" / mutant.name,
    )
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - started
    verdict = json.loads(report.read_text()) if report.exists() else None
    return GateRun(mutant, done.returncode, verdict, done.stdout + done.stderr, seconds)


class _GateRuns:
    """Gate runs by mutant name, started in parallel on first use and kept for the module."""

    def __init__(self, workdir: Path, wanted: list[str]) -> None:
        self._workdir = workdir
        self._wanted = wanted
        self._runs: dict[str, GateRun] = {}

    def __getitem__(self, name: str) -> GateRun:
        if name not in self._runs:
            todo = [n for n in dict.fromkeys([name, *self._wanted]) if n not in self._runs]
            with ThreadPoolExecutor(max_workers=2) as pool:
                runs = pool.map(lambda n: _run_gate(by_name(n), self._workdir), todo)
                self._runs.update((run.mutant.name, run) for run in runs)
        return self._runs[name]


@pytest.fixture(scope="module")
def gate_runs(request, tmp_path_factory):
    wanted = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "mutant" in params and item.module is request.module:
            wanted.append(params["mutant"].name)
        if getattr(item, "originalname", None) == "test_repro_replays_in_a_new_process":
            wanted.append(REPLAYED[params["kind"]])
    return _GateRuns(tmp_path_factory.mktemp("selftest"), wanted)


def _robustness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robustness", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT_S,
    )


# --------------------------------------------------------------------------- the corpus


def test_corpus_is_large_and_named_uniquely():
    names = [m.name for m in CORPUS]
    assert len(CORPUS) >= 15
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


def test_every_mutant_module_is_in_the_corpus():
    modules = {
        path.stem
        for path in Path(robustness.__file__).with_name("mutants").glob("*.py")
        if not path.stem.startswith("_")
    }
    assert modules == {m.name for m in CORPUS}


@pytest.mark.parametrize("mutant", CORPUS, ids=lambda m: m.name)
def test_mutant_is_importable_and_declares_a_contract_rule(mutant):
    module = importlib.import_module(f"robustness.mutants.{mutant.name}")
    assert mutant.rule in CONTRACT_IDS, f"{mutant.rule} is not a rule of robustness/CONTRACT.md"
    assert mutant.kind in ("loss", "metrics")
    # One sentence, as a reviewer would write it.
    assert mutant.bug.endswith("."), mutant.bug
    assert "\n" not in mutant.bug
    assert ". " not in mutant.bug, mutant.bug
    if mutant.kind == "loss":
        assert load_loss_target(mutant.target).loss_cls is module.MultiTaskLoss
        assert mutant.metrics == DEFAULT_METRICS_TARGET
    else:
        assert load_metrics_target(mutant.metrics).module is module
        assert mutant.target == DEFAULT_LOSS_TARGET


def test_contract_ids_are_parsed():
    # Guards the regex above: the contract has its loss and its metric rules.
    assert {"C-MASK-1", "C-REF-1", "C-STREAM-4", "C-METRIC-EDGE-1"} <= CONTRACT_IDS


# --------------------------------------------------------------------------- the kills


@pytest.mark.parametrize("mutant", CORPUS, ids=lambda m: m.name)
def test_gate_kills_mutant_with_its_declared_rule(gate_runs, mutant):
    run = gate_runs[mutant.name]
    assert run.exit_status == 1, run.explain()
    assert run.report is not None, run.explain()
    assert run.report["exit_status"] == 1
    failing_rows = {row["rule"] for row in run.report["rows"] if row["status"] == "FAIL"}
    assert mutant.rule in failing_rows, run.explain()
    first = run.failed()[0]
    assert first["rule"] == mutant.rule
    assert first["message"].startswith(f"[{mutant.rule}]"), first["message"]
    assert Path(first["repro"]).is_file(), first


@pytest.mark.parametrize("kind", sorted(REPLAYED))
def test_repro_replays_in_a_new_process(gate_runs, kind):
    mutant = by_name(REPLAYED[kind])
    run = gate_runs[mutant.name]
    assert run.exit_status == 1, run.explain()
    repro = run.failed()[0]["repro"]
    option = "--target" if kind == "loss" else "--metrics"
    default = DEFAULT_LOSS_TARGET if kind == "loss" else DEFAULT_METRICS_TARGET
    spec = mutant.target if kind == "loss" else mutant.metrics

    against_mutant = _robustness("replay", repro, option, spec)
    assert against_mutant.returncode == 1, against_mutant.stdout + against_mutant.stderr
    assert f"[{mutant.rule}]" in against_mutant.stdout
    assert "the violation reproduces" in against_mutant.stdout

    against_aam = _robustness("replay", repro, option, default)
    assert against_aam.returncode == 0, against_aam.stdout + against_aam.stderr
    assert "no longer reproduces" in against_aam.stdout


def test_selftest_command_reports_a_kill(tmp_path, capsys):
    # The cheapest kill, through selftest itself: the table, the JSON and the exit status.
    report = tmp_path / "selftest.json"
    status = run_selftest(
        [
            "--mutants",
            "update_empty_batch",
            "--skip-aam",
            "--jobs",
            "1",
            "--report-json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "update_empty_batch" in out
    assert "1/1 mutants killed" in out
    verdict = json.loads(report.read_text())
    assert verdict["killed"] == 1
    (row,) = verdict["mutants"]
    assert row["killed"]
    assert row["failed_rules"] == ["C-STREAM-1"]


@pytest.mark.parametrize(
    ("exit_status", "failed", "verdict"),
    [
        pytest.param(1, ("C-STREAM-1",), "C-STREAM-1", id="killed"),
        pytest.param(0, (), "SURVIVED (exit 0)", id="survived"),
        pytest.param(2, (), "NOT RUN (gate exit 2)", id="usage-error"),
        pytest.param(3, (), "NOT RUN (gate exit 3)", id="broken-run"),
    ],
)
def test_kill_table_tells_survivors_from_runs_that_broke(exit_status, failed, verdict):
    mutant = by_name("update_empty_batch")
    kill = Kill(mutant, exit_status, failed, 1.0, "robustness gate: error: something broke")
    table = _render([kill])
    assert verdict in table.splitlines()[2]
    assert ("not killed:" in table) is (exit_status != 1)
