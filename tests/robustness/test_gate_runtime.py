"""The gate's processes: one torch thread (tiny tensors) and a frozen start-up heap."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import robustness.gate as gate
from robustness import gate_runtime

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PROBE = "tests.robustness.runtime_probe:MultiTaskLoss"


def test_single_threaded_torch_sets_and_restores_threads_and_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with gate._single_threaded_torch():
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert os.environ["MKL_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == before
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert "MKL_NUM_THREADS" not in os.environ


def test_the_contract_runs_single_threaded_on_a_frozen_heap_in_a_worker(tmp_path):
    # A worker only gets what the gate's environment and plugin list give it; this process's
    # side is the unit tests above and below (a whole in-process gate would add ~20 s).
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "robustness",
            "gate",
            "--target",
            RUNTIME_PROBE,
            "--metrics",
            "none",
            "--rules",
            "C-SCALAR-1",
            "--profile",
            "commit",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--report-json",
            str(report),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())["rows"]
    assert rows
    assert {row["status"] for row in rows} == {"pass"}


class _Config:
    """The part of ``pytest.Config`` the runtime plugin uses: its cleanups, in pytest's order."""

    def __init__(self, *, worker: bool) -> None:
        self.cleanups: list[Callable[[], None]] = []
        if worker:
            self.workerinput: dict[str, str] = {"workerid": "gw0"}

    def add_cleanup(self, func: Callable[[], None]) -> None:
        self.cleanups.append(func)

    def run_cleanups(self) -> None:
        while self.cleanups:
            self.cleanups.pop()()  # last in, first out, like pytest's ExitStack


def test_the_runtime_plugin_unfreezes_the_heap_after_pytest_s_own_cleanups() -> None:
    config = _Config(worker=False)
    gate_runtime.pytest_configure(config)  # type: ignore[arg-type]
    frozen_during_cleanup: list[int] = []
    # Registered later (pytest's unraisable-exception cleanup), so it runs earlier.
    config.add_cleanup(lambda: frozen_during_cleanup.append(gc.get_freeze_count()))
    gate_runtime.pytest_collection_finish(None)  # type: ignore[arg-type]
    assert gc.get_freeze_count() > 0
    config.run_cleanups()
    assert frozen_during_cleanup[0] > 0
    assert gc.get_freeze_count() == 0


def test_an_xdist_worker_leaves_the_heap_frozen_for_its_exit() -> None:
    config = _Config(worker=True)
    gate_runtime.pytest_configure(config)  # type: ignore[arg-type]
    assert config.cleanups == []
    gate_runtime.pytest_sessionstart(None)  # type: ignore[arg-type]
    try:
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process goes on running
