"""How process-group workers are started: forked from a forkserver that imported torch once."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from robustness import process_group
from robustness.errors import HarnessUsageError

_FORKSERVER = "forkserver" in mp.get_all_start_methods()


@pytest.mark.skipif(not _FORKSERVER, reason="no forkserver start method on this platform")
def test_workers_start_from_a_forkserver_that_preloads_torch(monkeypatch):
    monkeypatch.delenv(process_group._START_METHOD_ENV, raising=False)
    context = process_group._start_context()
    assert context.get_start_method() == "forkserver"
    assert "torch" in process_group._PRELOAD


def test_spawn_can_be_asked_for(monkeypatch):
    monkeypatch.setenv(process_group._START_METHOD_ENV, "spawn")
    assert process_group._start_context().get_start_method() == "spawn"


def test_an_unknown_start_method_is_a_one_line_usage_error(monkeypatch):
    monkeypatch.setenv(process_group._START_METHOD_ENV, "fork")
    with pytest.raises(HarnessUsageError, match="must be 'forkserver' or 'spawn'"):
        process_group._start_context()


def test_job_modules_are_declared_once_each(monkeypatch):
    monkeypatch.setattr(process_group, "_JOB_MODULES", [])
    process_group.job_module("some.jobs")
    process_group.job_module("some.jobs")
    assert process_group._JOB_MODULES == ["some.jobs"]


def test_the_contract_s_job_modules_are_preloaded_by_the_forkserver():
    # Their ranks would import each (Hypothesis, pytest, the harness) when unpickling a job.
    import robustness.contract.test_mutation_gaps
    import robustness.properties._distributed

    for module in (robustness.properties._distributed, robustness.contract.test_mutation_gaps):
        assert module.__name__ in process_group._JOB_MODULES
