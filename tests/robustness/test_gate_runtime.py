"""The gate's processes: one torch thread (tiny tensors) and a frozen start-up heap."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
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


def test_the_runtime_plugin_unfreezes_the_heap_when_pytest_ends() -> None:
    gate_runtime.pytest_collection_finish(None)  # type: ignore[arg-type]
    assert gc.get_freeze_count() > 0
    gate_runtime.pytest_unconfigure(None)  # type: ignore[arg-type]
    assert gc.get_freeze_count() == 0
