"""aam's distributed pieces: metric sync and the gathered UniFrac loss.

Equality with the single process over drawn cases is the contract suite's job (C-DDP-1/2,
``robustness/contract/test_distributed_rules.py``). Here: behaviour without a process group,
argument validation, and, in a real gloo group, that invalid input on one rank makes *every*
rank raise (nobody is left waiting in a collective), that synced states are identical on every
rank, and the documented gradient convention for shared parameters.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from aam.training.distributed import gathered_base_loss
from aam.training.losses import MultiTaskLoss, compute_pairwise_distances
from aam.training.metrics import (
    StreamingClassificationMetrics,
    StreamingCountMetrics,
    StreamingRegressionMetrics,
)
from robustness.process_group import close_pools, shared_pool

# Every test here starts (or reuses) real process groups: keep them on one xdist worker
# (--dist loadgroup) so the groups are spawned once, not once per worker.
pytestmark = pytest.mark.xdist_group("process-groups")

TABLE = torch.tensor(
    [
        [0.0, 0.3, 0.9, 0.4],
        [0.3, 0.0, 0.5, 0.7],
        [0.9, 0.5, 0.0, 0.2],
        [0.4, 0.7, 0.2, 0.0],
    ],
    dtype=torch.float64,
)
EMB = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
IDS = torch.tensor([3, 0, 2])


@pytest.fixture(scope="module", autouse=True)
def _release_pools():
    yield
    close_pools()


def _single(emb, ids):
    target = TABLE[ids][:, ids]
    return MultiTaskLoss().compute_base_loss(compute_pairwise_distances(emb), target, "unifrac")


# --------------------------------------------------------------------------- no process group


@pytest.mark.parametrize(
    ("state", "args"),
    [
        pytest.param(StreamingRegressionMetrics(), (EMB[:, 0], EMB[:, 1]), id="regression"),
        pytest.param(
            StreamingClassificationMetrics(), (torch.tensor([0, 2]), torch.tensor([1, 2])), id="cls"
        ),
        pytest.param(
            StreamingCountMetrics(),
            (EMB.unsqueeze(-1), EMB.flip(0).unsqueeze(-1), torch.ones(3, 2)),
            id="count",
        ),
    ],
)
def test_sync_without_a_process_group_is_a_no_op(state, args):
    state = copy.deepcopy(state)
    state.update(*args)
    before = state.compute()
    state.sync_distributed()
    after = state.compute()
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key])
        else:
            assert value == after[key]


def test_gathered_loss_without_a_process_group_is_the_local_loss():
    emb = EMB.clone().requires_grad_(True)
    got = gathered_base_loss(emb, IDS, TABLE)
    assert torch.equal(got, _single(EMB, IDS))
    got.backward()
    assert emb.grad is not None
    assert bool(torch.isfinite(emb.grad).all())


def test_distances_may_be_a_callable_of_the_global_ids():
    seen = []

    def lookup(ids):
        seen.append(ids.tolist())
        return TABLE[ids][:, ids]

    assert torch.equal(gathered_base_loss(EMB, IDS, lookup), _single(EMB, IDS))
    assert seen == [IDS.tolist()]


def test_a_batch_of_one_or_none_gives_zero():
    assert float(gathered_base_loss(EMB[:1], IDS[:1], TABLE)) == 0.0
    assert float(gathered_base_loss(EMB[:0], IDS[:0], TABLE)) == 0.0


@pytest.mark.parametrize(
    ("embeddings", "ids", "distances", "match"),
    [
        pytest.param(EMB[:, 0], IDS, TABLE, r"embeddings must be \[B, D\]", id="emb-1d"),
        pytest.param(EMB.long(), IDS, TABLE, "must be floating", id="emb-int"),
        pytest.param(EMB, IDS.double(), TABLE, "integer ids", id="ids-float"),
        pytest.param(
            EMB,
            IDS[:2],
            TABLE,
            r"sample_ids shape \(2,\) does not match embeddings \(3, 2\)",
            id="ids-short",
        ),
        pytest.param(EMB, IDS, TABLE[:3], r"\[N, N\].*\(3, 4\)", id="table-not-square"),
        pytest.param(EMB, IDS, "table", "tensor or a callable", id="table-str"),
        pytest.param(EMB, torch.tensor([3, 0, 4]), TABLE, r"outside \[0, 4\)", id="id-too-big"),
        pytest.param(EMB, torch.tensor([3, -1, 2]), TABLE, "global position 1", id="id-negative"),
        pytest.param(
            EMB, IDS, lambda ids: TABLE[:2, :2], r"must return the \[B, B\]", id="lookup-shape"
        ),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(embeddings, ids, distances, match):
    with pytest.raises(ValueError, match=match):
        gathered_base_loss(embeddings, ids, distances)


# --------------------------------------------------------------------------- in a real group


def _bad_ids_on_rank_1(rank, world_size, payload):
    ids = IDS[:2] if rank == 1 else IDS
    try:
        gathered_base_loss(EMB, ids, TABLE)
    except ValueError as exc:
        return str(exc)
    return None


def _mixed_dims(rank, world_size, payload):
    emb = torch.zeros(2, 2 + rank, dtype=torch.float64)
    try:
        gathered_base_loss(emb, IDS[:2], TABLE)
    except ValueError as exc:
        return str(exc)
    return None


def _mixed_num_classes(rank, world_size, payload):
    state = StreamingClassificationMetrics(num_classes=3 + rank)
    try:
        state.sync_distributed()
    except ValueError as exc:
        return str(exc)
    return None


def test_bad_input_on_one_rank_raises_on_every_rank():
    messages = [o.value for o in shared_pool(2).run(_bad_ids_on_rank_1, None, timeout=60)]
    assert "sample_ids shape (2,) does not match embeddings (3, 2)" in messages[1]
    assert "(on rank 1)" in messages[1]
    assert "rank(s) [1] passed invalid arguments" in messages[0]


def test_ranks_with_different_embedding_widths_raise_together():
    messages = [o.value for o in shared_pool(2).run(_mixed_dims, None, timeout=60)]
    assert messages[0] == messages[1]
    assert "must share D and dtype" in messages[0]


def test_ranks_with_different_num_classes_raise_together():
    messages = [o.value for o in shared_pool(2).run(_mixed_num_classes, None, timeout=60)]
    assert messages[0] == messages[1]
    assert "different num_classes (from 3 to 4)" in messages[0]


def _synced_states(rank, world_size, payload):
    gen = torch.Generator().manual_seed(rank)
    n = 5 * rank  # rank 0 has no data
    reg, cnt = StreamingRegressionMetrics(), StreamingCountMetrics()
    cls = StreamingClassificationMetrics()
    if n:
        true = 1e6 + torch.randn(n, generator=gen, dtype=torch.float64)
        reg.update(true + torch.randn(n, generator=gen, dtype=torch.float64), true)
        cls.update(torch.randint(0, 2 + rank, (n,), generator=gen), torch.full((n,), rank))
        cnt.update(
            torch.randn(n, 2, 1, generator=gen),
            torch.randn(n, 2, 1, generator=gen),
            torch.ones(n, 2),
        )
    for state in (reg, cls, cnt):
        state.sync_distributed()
    return (
        [*torch.stack(reg._tensors()).tolist(), reg._n],
        cls._cm.numpy(),
        [int(cnt._n), float(cnt._abs), float(cnt._sq)],
    )


def test_synced_states_are_identical_on_every_rank():
    outcomes = shared_pool(3).run(_synced_states, None, timeout=60)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    first = outcomes[0].value
    assert first[0][-1] == 15  # counts: 0 + 5 + 10 samples
    assert first[1].shape == (4, 4)  # classes 0..3, seen only by rank 2
    assert first[2][0] == 30
    for other in outcomes[1:]:
        assert other.value[0] == first[0]
        assert (other.value[1] == first[1]).all()
        assert other.value[2] == first[2]


def _shared_weight_grad(rank, world_size, payload):
    x, ids, sizes = payload
    start = sum(sizes[:rank])
    weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(3, 2))
    emb = x[start : start + sizes[rank]] @ weight
    loss = gathered_base_loss(emb, ids[start : start + sizes[rank]], TABLE)
    loss.backward()
    assert dist.get_world_size() == world_size
    return float(loss.detach()), weight.grad.numpy()


def test_summed_rank_gradients_of_a_shared_weight_equal_the_single_process_gradient():
    x = torch.tensor(
        [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [3.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64
    )
    ids = torch.tensor([2, 0, 3, 1])
    weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(3, 2))
    single = _single(x @ weight, ids)
    single.backward()
    outcomes = shared_pool(3).run(_shared_weight_grad, (x, ids, [1, 0, 3]), timeout=60)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert all(o.value[0] == float(single.detach()) for o in outcomes)
    summed = sum(torch.from_numpy(o.value[1]) for o in outcomes)
    torch.testing.assert_close(summed, weight.grad, rtol=1e-12, atol=1e-14)
