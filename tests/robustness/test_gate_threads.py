"""The gate runs the contract single-threaded: its tensors are too small for intra-op threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustness.gate as gate

ROOT = Path(__file__).resolve().parents[2]
THREADS_PROBE = "tests.robustness.threads_probe:MultiTaskLoss"


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


@pytest.mark.parametrize("workers", ["0", "1"])
def test_the_contract_runs_with_one_torch_thread_in_process_and_in_workers(tmp_path, workers):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "robustness",
            "gate",
            "--target",
            THREADS_PROBE,
            "--metrics",
            "none",
            "--rules",
            "C-SCALAR-1",
            "--profile",
            "commit",
            "--device",
            "cpu",
            "--workers",
            workers,
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
