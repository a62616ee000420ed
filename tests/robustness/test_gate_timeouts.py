"""Timeouts fail fast: a hanging case is reported once, with its input, and never retried."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from robustness.errors import ContractViolation
from robustness.process_group import close_pools
from robustness.properties import _distributed
from robustness.properties._distributed import check_sync_distributed, forget_hangs
from robustness.strategies._distributed import sharded
from robustness.strategies._metric_data import regression_data
from robustness.target import load_metrics_target

HANGING = "tests.robustness.broken_hang"


@pytest.fixture
def short_timeout(monkeypatch):
    """A 1.5 s job timeout (the default is a minute), and no hang remembered before or after."""
    monkeypatch.setenv(_distributed.DDP_TIMEOUT_ENV, "1.5")
    forget_hangs()
    yield
    forget_hangs()
    close_pools()


def test_a_hanging_rank_is_reported_once_and_not_retried_while_shrinking(
    short_timeout, monkeypatch
):
    jobs = []
    start = _distributed.shared_pool

    def counting_pool(world_size, backend="gloo"):
        jobs.append(world_size)
        return start(world_size, backend)

    monkeypatch.setattr(_distributed, "shared_pool", counting_pool)
    metrics = load_metrics_target(HANGING)

    # Enough examples that Hypothesis would retry the hang many times while shrinking.
    @settings(
        max_examples=20,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(case=sharded(regression_data(min_size=2, max_size=8), 2))
    def every_case_hangs(case):
        data, shards = case
        check_sync_distributed(metrics, data, metric="regression", shards=shards)

    with pytest.raises(ContractViolation) as raised:
        every_case_hangs()
    assert jobs == [2], f"the hanging case ran {len(jobs)} times, not once"
    message = str(raised.value)
    assert "no answer within 1.5 s" in message
    assert "fail fast" in message
    assert "input" in raised.value.details


def test_a_bad_timeout_is_a_usage_error(monkeypatch):
    from robustness.errors import HarnessUsageError

    monkeypatch.setenv(_distributed.DDP_TIMEOUT_ENV, "soon")
    with pytest.raises(HarnessUsageError, match="ROBUSTNESS_DDP_TIMEOUT"):
        _distributed._job_timeout()
