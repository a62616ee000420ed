"""The distributed checks fail on broken merges and gathered losses, and pass on aam.

Every check here starts (or reuses) a real gloo process group on loopback, so the broken
variants live in an importable module (``tests.robustness.broken_distributed``) and the cases
are hand-built, each chosen so the bug shows: unequal per-rank sizes, an empty rank.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    InvalidTargetError,
    from_plain,
    to_plain,
)
from robustness.process_group import ProcessGroupPool, close_pools
from robustness.properties._distributed import (
    check_gathered_base_loss,
    check_sync_distributed,
    distributed_skip_reason,
)
from robustness.strategies._distributed import (
    GatheredBatch,
    gathered_batches,
    sharded,
    shards,
)
from robustness.strategies._metric_data import (
    ClassificationData,
    CountData,
    Partition,
    RegressionData,
    regression_data,
)
from robustness.target import (
    DEFAULT_GATHERED_LOSS,
    GATHERED_LOSS_ENV,
    find_gathered_loss,
    load_loss_target,
    load_metrics_target,
)

# Every test here starts (or reuses) real process groups: keep them on one xdist worker
# (--dist loadgroup) so the groups are spawned once, not once per worker.
pytestmark = pytest.mark.xdist_group("process-groups")

BROKEN = "tests.robustness.broken_distributed"
AAM_LOSS = "aam.training.distributed:gathered_base_loss"

# Rank means 1.5, (none), 6.5: an unweighted mean of means misses the spread between ranks.
REGRESSION = RegressionData(
    torch.tensor([1.0, 2.0, 4.0, 4.0, 6.0, 7.0, 9.0]),
    torch.tensor([1.0, 2.0, 5.0, 4.0, 9.0, 6.0, 8.0]),
)
COUNT = CountData(
    torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 1.0]]).unsqueeze(-1),
    torch.tensor([[1.5, 2.0], [2.0, 9.0], [5.0, 0.0]]).unsqueeze(-1),
    torch.tensor([[1, 1], [1, 0], [0, 1]]),
)


def _batch() -> GatheredBatch:
    gen = torch.Generator().manual_seed(0)
    table = torch.rand(9, 9, generator=gen, dtype=torch.float64)
    table = (table + table.T).fill_diagonal_(0.0)
    emb = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    return GatheredBatch(emb, torch.tensor([8, 1, 4, 0, 6, 3]), table)


@pytest.fixture(scope="module", autouse=True)
def _release_pools():
    yield
    close_pools()


@pytest.fixture(scope="module")
def aam_metrics():
    return load_metrics_target("aam.training.metrics")


@pytest.fixture(scope="module")
def aam_loss():
    return load_loss_target()


# --------------------------------------------------------------------------- broken variants die


def test_sync_check_kills_an_unweighted_mean_of_means():
    with pytest.raises(ContractViolation) as info:
        check_sync_distributed(
            load_metrics_target(BROKEN),
            REGRESSION,
            metric="regression",
            shards=Partition((2, 0, 5)),
        )
    assert info.value.rule == "C-DDP-1"
    assert info.value.term == "regression.r2"
    assert "after sync_distributed differs" in info.value.headline
    assert info.value.replay is not None


def test_sync_check_reports_a_rank_that_raises_with_its_message():
    with pytest.raises(ContractViolation) as info:
        check_sync_distributed(
            load_metrics_target(BROKEN), COUNT, metric="count", shards=Partition((1, 2))
        )
    assert info.value.rule == "C-DDP-1"
    assert "failed on rank 1 of 2: RuntimeError: rank 1 lost its state" in info.value.headline


def test_sync_check_fails_clearly_without_sync_distributed(monkeypatch):
    target = load_metrics_target(BROKEN)

    class StreamingWithoutSync:
        def update(self, y_pred, y_true): ...

    monkeypatch.setattr(target.module, "StreamingRegressionMetrics", StreamingWithoutSync)
    with pytest.raises(ContractViolation, match="has no sync_distributed") as info:
        check_sync_distributed(target, REGRESSION, metric="regression", shards=Partition((3, 4)))
    assert info.value.rule == "C-DDP-1"


def test_gathered_check_kills_a_block_diagonal_loss(aam_loss):
    with pytest.raises(ContractViolation) as info:
        check_gathered_base_loss(
            aam_loss,
            _batch(),
            gathered=f"{BROKEN}:block_diagonal_base_loss",
            shards=Partition((2, 0, 4)),
        )
    assert info.value.rule == "C-DDP-2"
    assert "differs from the single-process loss" in info.value.headline


def test_gathered_check_kills_gradients_summed_over_ranks(aam_loss):
    with pytest.raises(ContractViolation) as info:
        check_gathered_base_loss(
            aam_loss,
            _batch(),
            gathered=f"{BROKEN}:grad_summing_base_loss",
            shards=Partition((4, 2)),
        )
    assert info.value.rule == "C-DDP-2"
    assert "gradient of its local embeddings differs" in info.value.headline


# --------------------------------------------------------------------------- aam passes


@pytest.mark.parametrize(
    ("metric", "data", "sizes"),
    [
        pytest.param("regression", REGRESSION, (2, 0, 5), id="regression-empty-rank"),
        pytest.param(
            "classification",
            # Ranks see classes {0, 1}, {} and {2, 3}: matrices of sizes 2, 0 and 4.
            ClassificationData(torch.tensor([0, 1, 1, 2, 3, 3]), torch.tensor([0, 1, 1, 2, 3, 2])),
            (3, 0, 3),
            id="classification-disjoint-classes",
        ),
        pytest.param("count", COUNT, (0, 3), id="count-empty-rank-0"),
        pytest.param("regression", REGRESSION, (7,), id="world-of-one"),
    ],
)
def test_sync_check_passes_on_aam(aam_metrics, metric, data, sizes):
    check_sync_distributed(aam_metrics, data, metric=metric, shards=Partition(sizes))


@pytest.mark.parametrize("sizes", [(2, 0, 4), (0, 6), (6,), (0, 0, 6)])
def test_gathered_check_passes_on_aam(aam_loss, sizes):
    check_gathered_base_loss(aam_loss, _batch(), gathered=AAM_LOSS, shards=Partition(sizes))


def test_gathered_check_passes_when_every_rank_is_empty(aam_loss):
    empty = GatheredBatch(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), torch.zeros(3, 3))
    check_gathered_base_loss(aam_loss, empty, gathered=AAM_LOSS, shards=Partition((0, 0)))


# --------------------------------------------------------------------------- misuse


def test_gathered_loss_must_be_importable_by_name(aam_loss):
    def local_loss(embeddings, sample_ids, distances, *, group=None):
        raise AssertionError("never called")

    with pytest.raises(HarnessUsageError, match="module-level function"):
        check_gathered_base_loss(aam_loss, _batch(), gathered=local_loss, shards=Partition((3, 3)))


def test_shards_must_split_the_case(aam_metrics):
    with pytest.raises(HarnessUsageError, match="do not split"):
        check_sync_distributed(
            aam_metrics, REGRESSION, metric="regression", shards=Partition((1, 1))
        )


def test_pool_rejects_bad_arguments():
    with pytest.raises(HarnessUsageError, match="world_size"):
        ProcessGroupPool(0)
    with pytest.raises(HarnessUsageError, match="backend"):
        ProcessGroupPool(2, backend="carrier-pigeon")


def test_a_rank_that_skips_a_collective_times_out_instead_of_hanging():
    from tests.robustness.broken_distributed import skip_collective_on_rank_1

    pool = ProcessGroupPool(2, op_timeout=2.0)
    try:
        outcomes = pool.run(skip_collective_on_rank_1, None, timeout=20.0)
    finally:
        pool.close()
    assert not pool.alive
    assert outcomes[1].ok
    assert not outcomes[0].ok
    assert "Timed out" in outcomes[0].error or "timed out" in outcomes[0].error.lower()


def test_nccl_is_skipped_with_a_reason_without_two_gpus():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs: NCCL runs")
    assert "GPU" in distributed_skip_reason("cuda", 2)
    assert distributed_skip_reason("cpu", 3) is None


# --------------------------------------------------------------------------- finding the loss


def test_default_target_uses_aams_gathered_loss(aam_loss, monkeypatch):
    monkeypatch.delenv(GATHERED_LOSS_ENV, raising=False)
    assert find_gathered_loss(aam_loss)[0] == DEFAULT_GATHERED_LOSS


def test_environment_names_the_gathered_loss(aam_loss, monkeypatch):
    monkeypatch.setenv(GATHERED_LOSS_ENV, f"{BROKEN}:block_diagonal_base_loss")
    assert find_gathered_loss(aam_loss) == (
        f"{BROKEN}:block_diagonal_base_loss",
        f"${GATHERED_LOSS_ENV}",
    )
    monkeypatch.setenv(GATHERED_LOSS_ENV, f"{BROKEN}:no_such_loss")
    with pytest.raises(InvalidTargetError, match="not a callable"):
        find_gathered_loss(aam_loss)


def test_a_target_without_a_gathered_loss_gets_a_skip_reason(monkeypatch):
    monkeypatch.delenv(GATHERED_LOSS_ENV, raising=False)
    target = load_loss_target(f"{BROKEN}:MultiTaskLoss")  # aam's loss, no gathered loss beside
    spec, why = find_gathered_loss(target)
    assert spec is None
    assert GATHERED_LOSS_ENV in why


# --------------------------------------------------------------------------- strategies


@given(data=st.data(), world_size=st.integers(1, 4), n=st.integers(0, 12))
def test_shards_split_every_row_over_every_rank(data, world_size, n):
    min_empty = data.draw(st.integers(0, world_size if n == 0 else world_size - 1))
    split = data.draw(shards(n, world_size, min_empty=min_empty))
    assert len(split.sizes) == world_size
    assert split.total == n
    assert sum(s == 0 for s in split.sizes) >= min_empty


@given(case=sharded(regression_data(max_size=6), 3, min_empty=1))
def test_sharded_cases_leave_a_rank_empty(case):
    data, split = case
    assert split.total == data.n_rows
    assert 0 in split.sizes


@given(batch=gathered_batches())
def test_gathered_batches_hold_distinct_ids_into_a_symmetric_table(batch):
    ids = batch.sample_ids.tolist()
    assert len(set(ids)) == len(ids) == batch.n_rows
    assert all(0 <= i < batch.distances.shape[0] for i in ids)
    assert torch.equal(batch.distances, batch.distances.T)
    assert bool((batch.distances.diagonal() == 0).all())


def test_gathered_batches_round_trip_through_plain_data():
    batch = _batch()
    back = from_plain(to_plain({"b": batch}))["b"]
    assert torch.equal(back.embeddings, batch.embeddings)
    assert torch.equal(back.sample_ids, batch.sample_ids)


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        pytest.param(shards, {"n": -1, "world_size": 2}, "n >= 0", id="negative-n"),
        pytest.param(shards, {"n": 3, "world_size": 0}, "world_size >= 1", id="no-ranks"),
        pytest.param(
            shards, {"n": 3, "world_size": 2, "min_empty": 2}, "cannot leave", id="all-empty"
        ),
        pytest.param(gathered_batches, {"dtype": torch.float16}, "dtype", id="half"),
        pytest.param(gathered_batches, {"min_batch": 3, "max_batch": 2}, "min_batch", id="sizes"),
    ],
)
def test_distributed_strategy_arguments_are_validated(factory, kwargs, match):
    with pytest.raises(HarnessUsageError, match=match):
        factory(**kwargs)
