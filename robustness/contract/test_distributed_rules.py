"""The packaged distributed contract suite: C-DDP-1 (metric sync) and C-DDP-2 (gathered loss).

Every test runs the configured target in a real ``torch.distributed`` process group of 2 and of
3 ranks (gloo on loopback for cpu; NCCL for cuda, skipped with a reason without a GPU per rank).
The groups are started once per world size and reused for every drawn case (see
``robustness.process_group``), so a case costs one round trip, not a spawn; they are shut down
at the end of this module. A case that times out is reported once, with its input, and not
retried while Hypothesis shrinks (see ``robustness.properties._distributed``). Cases are split
unevenly over the ranks, often with an empty rank; the historical failures are explicit cases
below: a rank with no data, ranks that saw disjoint classes, all data on one rank. Example
budgets come from the Hypothesis profile.

The metrics target must be importable by name (the workers import it). C-DDP-2 needs a gathered
loss, an optional part of a target: ``$ROBUSTNESS_GATHERED_LOSS`` (``module:function``), else a
``gathered_base_loss`` beside the loss class, else aam's own for the default target; a target
that provides none skips C-DDP-2 with that reason.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustness.process_group import close_pools
from robustness.properties._distributed import (
    check_gathered_base_loss,
    check_sync_distributed,
    distributed_skip_reason,
    forget_hangs,
)
from robustness.strategies._distributed import GatheredBatch, gathered_batches, sharded
from robustness.strategies._metric_data import (
    ClassificationData,
    CountData,
    Partition,
    RegressionData,
    classification_data,
    count_data,
    regression_data,
)
from robustness.target import find_gathered_loss

# Every test here starts (or reuses) real process groups: keep them on one xdist worker
# (--dist loadgroup) so the groups are spawned once, not once per worker.
pytestmark = pytest.mark.xdist_group("process-groups")

WORLD_SIZES = (2, 3)

_FAMILY_DATA = {
    "regression": regression_data(max_size=24),
    "classification": classification_data(max_batch=16),
    "count": count_data(max_batch=6),
}


@pytest.fixture(scope="module", autouse=True)
def _process_groups():
    forget_hangs()  # a hang recorded by an earlier run in this process is not this run's
    yield
    close_pools()
    forget_hangs()


def _runs_here(device: str, world_size: int) -> None:
    """Skip (with the reason) where a group of ``world_size`` ranks cannot run on ``device``."""
    reason = distributed_skip_reason(device, world_size)
    if reason is not None:
        pytest.skip(reason)


_RANKS = pytest.mark.parametrize("world_size", WORLD_SIZES, ids=lambda n: f"{n}-ranks")


@pytest.fixture(scope="session")
def gathered_loss(loss_target):
    spec, how = find_gathered_loss(loss_target)
    if spec is None:
        pytest.skip(how)
    return spec


# --------------------------------------------------------------------------- C-DDP-1


@pytest.mark.rule("C-DDP-1")
@_RANKS
@pytest.mark.parametrize("metric", list(_FAMILY_DATA))
@given(draw=st.data())
def test_synced_metrics_equal_one_process_fed_everything(
    metrics_target, contract_device, world_size, metric, draw
):
    _runs_here(contract_device, world_size)
    data, shards = draw.draw(sharded(_FAMILY_DATA[metric], world_size), label="case")
    check_sync_distributed(
        metrics_target, data, metric=metric, shards=shards, device=contract_device
    )


def _ids(pred: list[int], true: list[int], num_classes: int | None = None) -> ClassificationData:
    return ClassificationData(torch.tensor(pred), torch.tensor(true), num_classes)


_REGRESSION = RegressionData(
    torch.tensor([1.0, 2.0, 4.0, 4.0, 6.0, 7.0, 9.0]),
    torch.tensor([1.0, 2.0, 5.0, 4.0, 9.0, 6.0, 8.0]),
)
_COUNT = CountData(
    torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 1.0]]).unsqueeze(-1),
    torch.tensor([[1.5, 2.0], [2.0, 9.0], [5.0, 0.0]]).unsqueeze(-1),
    torch.tensor([[1, 1], [1, 0], [0, 1]]),
)


@pytest.mark.rule("C-DDP-1")
@pytest.mark.parametrize(
    ("metric", "data", "sizes"),
    [
        # Unequal counts: an unweighted mean of the ranks' means is wrong here.
        pytest.param("regression", _REGRESSION, (2, 0, 5), id="regression-empty-middle-rank"),
        pytest.param("regression", _REGRESSION, (0, 7), id="regression-all-on-last-rank"),
        # Ranks infer K = 2, 0 and 4: they must agree on one size before summing.
        pytest.param(
            "classification",
            _ids([0, 1, 1, 2, 3, 3], [0, 1, 1, 2, 3, 2]),
            (3, 0, 3),
            id="classification-disjoint-classes",
        ),
        pytest.param(
            "classification",
            _ids([2, 0, 1], [2, 0, 1], 4),
            (0, 3),
            id="classification-num-classes-empty-rank",
        ),
        pytest.param("count", _COUNT, (0, 1, 2), id="count-empty-first-rank"),
    ],
)
def test_synced_metrics_handle_empty_ranks_and_disjoint_classes(
    metrics_target, contract_device, metric, data, sizes
):
    _runs_here(contract_device, len(sizes))
    check_sync_distributed(
        metrics_target, data, metric=metric, shards=Partition(sizes), device=contract_device
    )


# --------------------------------------------------------------------------- C-DDP-2


@pytest.mark.rule("C-DDP-2", term="base_loss")
@_RANKS
@given(draw=st.data())
def test_gathered_loss_equals_the_single_process_loss(
    loss_target, gathered_loss, contract_device, world_size, draw
):
    _runs_here(contract_device, world_size)
    batch, shards = draw.draw(sharded(gathered_batches(), world_size), label="case")
    check_gathered_base_loss(
        loss_target, batch, gathered=gathered_loss, shards=shards, device=contract_device
    )


def _gathered_batch() -> GatheredBatch:
    gen = torch.Generator().manual_seed(6)
    table = torch.rand(8, 8, generator=gen, dtype=torch.float64)
    table = (table + table.T).fill_diagonal_(0.0)
    emb = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    emb[3] = emb[1]  # an exact duplicate across ranks: distance 0, finite gradient
    return GatheredBatch(emb, torch.tensor([7, 0, 5, 2, 4]), table)


@pytest.mark.rule("C-DDP-2", term="base_loss")
@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param((2, 0, 3), id="empty-middle-rank"),
        pytest.param((0, 5), id="all-on-last-rank"),
        pytest.param((1, 1, 3), id="single-sample-ranks"),
    ],
)
def test_gathered_loss_handles_empty_and_single_sample_ranks(
    loss_target, gathered_loss, contract_device, sizes
):
    _runs_here(contract_device, len(sizes))
    check_gathered_base_loss(
        loss_target,
        _gathered_batch(),
        gathered=gathered_loss,
        shards=Partition(sizes),
        device=contract_device,
    )
