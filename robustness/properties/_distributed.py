"""One check per distributed rule, run in a real process group: C-DDP-1 and C-DDP-2.

Both checks split one drawn case over the ranks of a real ``torch.distributed`` group (gloo on
loopback for cpu, NCCL for cuda; see :mod:`robustness.process_group`), as a
:class:`~robustness.strategies.Partition` with one part per rank in rank order (empty ranks
allowed), and compare what every rank ends with against the single-process answer computed in
the calling process:

* C-DDP-1: each rank feeds its part to a streaming state (in two ``update`` calls; an empty rank
  calls none) and calls ``sync_distributed()``; every rank's ``compute()`` must equal one state
  fed all those batches (the confusion matrix exactly, numbers within the C-STREAM tolerance).
* C-DDP-2: each rank calls the gathered loss on its rows, ids and the shared distance table, and
  backpropagates; every rank's value must equal the loss target's single-process base loss on
  the concatenated batch, and every rank's gradient the rows of the single-process gradient that
  belong to it.

The code under test runs in fresh worker processes, so it must be importable by name there: the
metrics target by its module path, the gathered loss as a module-level ``module:function``.
A rank that raises, or a group that hangs until its timeout (a rank that skipped a collective),
is a violation that carries the rank's error.

Timeouts fail fast: a case that times out (a collective timeout on a rank, or a rank with no
answer within ``$ROBUSTNESS_DDP_TIMEOUT`` seconds, default :data:`DDP_JOB_TIMEOUT`) is recorded
for its row (rule, metric or term, ranks, device, target). Every later case of that row
(Hypothesis's shrinking included) raises the recorded violation, with the input that hung,
without starting a process group again, so a hang costs one timeout, not one per shrink
attempt. :func:`forget_hangs` clears the record (the contract module does at its end).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import torch

from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    ReplaySpec,
    qualified_name,
    resolve_qualified_name,
)
from robustness.process_group import BACKENDS, JobOutcome, job_module, shared_pool
from robustness.properties._metrics import (
    _FAMILIES,
    MetricData,
    _compare_results,
    _compute,
    _family,
    _fed,
    _matrix,
    _new_state,
    _number,
)
from robustness.references._losses import reference_pairwise_distances
from robustness.strategies._distributed import GatheredBatch
from robustness.strategies._metric_data import Partition
from robustness.target import LossTarget, MetricsTarget, load_metrics_target
from robustness.tolerances import mismatch, tolerance

__all__ = [
    "DDP_JOB_TIMEOUT",
    "DDP_TIMEOUT_ENV",
    "check_gathered_base_loss",
    "check_sync_distributed",
    "distributed_skip_reason",
    "forget_hangs",
]

#: Seconds one case may take on every rank (the group's own collective timeout is 30 s).
DDP_JOB_TIMEOUT = 60.0
#: Environment variable overriding :data:`DDP_JOB_TIMEOUT` (seconds, > 0).
DDP_TIMEOUT_ENV = "ROBUSTNESS_DDP_TIMEOUT"
# A rank's error that says the group ran out of time rather than raised.
_TIMED_OUT = re.compile(r"no answer within|timed out|timeout", re.IGNORECASE)
# Row -> the violation of the case that hung there (see the module docstring).
_HUNG: dict[tuple[str, ...], ContractViolation] = {}

GatheredLoss = Callable[..., torch.Tensor]


job_module(__name__)  # the jobs below: imported once by the process groups' forkserver


def distributed_skip_reason(device: str, world_size: int) -> str | None:
    """Why a ``world_size``-rank group cannot run on ``device`` here (``None`` when it can)."""
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if device == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < max(world_size, 2):
            return (
                f"NCCL needs one GPU per rank: {world_size} rank(s), {count} GPU(s) here "
                "(gloo on cpu runs everywhere)"
            )
        if not dist.is_nccl_available():
            return "NCCL is not available in this torch build"
    return None


def _job_timeout() -> float:
    text = os.environ.get(DDP_TIMEOUT_ENV)
    if not text:
        return DDP_JOB_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise HarnessUsageError(f"{DDP_TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


def forget_hangs() -> None:
    """Forget every recorded hang: later cases run again."""
    _HUNG.clear()


def _raise_hung(row: tuple[str, ...]) -> NoReturn:
    """Raise the violation recorded for ``row`` (one raise site: one failure to Hypothesis)."""
    hung = _HUNG[row]
    raise ContractViolation(
        hung.rule, hung.term, hung.headline, details=hung.details, replay=hung.replay
    )


def _fail_fast_on_timeout(
    row: tuple[str, ...], outcomes: list[JobOutcome], violation: ContractViolation
) -> None:
    """Record ``violation`` for ``row`` if the case timed out, and raise it from one place."""
    if any(not o.ok and _TIMED_OUT.search(o.error) for o in outcomes):
        details = dict(violation.details)
        details["fail fast"] = (
            "the case timed out: later cases of this row, shrinking included, report this "
            "input without running (a hang is not retried)"
        )
        _HUNG[row] = ContractViolation(
            violation.rule,
            violation.term,
            violation.headline,
            details=details,
            replay=violation.replay,
        )
        _raise_hung(row)


def _backend(device: str) -> str:
    if device not in BACKENDS:
        raise HarnessUsageError(f"device must be one of {', '.join(BACKENDS)}, got {device!r}")
    return BACKENDS[device]


def _rank_device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device == "cuda" else "cpu"


def _check_shards(n_rows: int, shards: Partition) -> None:
    if shards.total != n_rows or any(s < 0 for s in shards.sizes) or not shards.sizes:
        raise HarnessUsageError(
            f"shards {list(shards.sizes)} do not split the case's {n_rows} rows over the ranks"
        )


def _first_lines(error: str, limit: int = 12) -> str:
    lines = error.splitlines()
    return "\n".join(lines[:limit] + (["..."] if len(lines) > limit else []))


#: gloo's errors on a rank whose peer left the group: an echo of the peer's failure.
_PEER_ECHOES = ("closed by peer", "reset by peer")


def _failed(
    rule: str, term: str, what: str, outcomes: list[JobOutcome], details: dict[str, object]
) -> ContractViolation | None:
    """A violation for the first failed rank (the one whose error is not a peer's echo)."""
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return None
    # Peers of a rank that raised fail with "Connection closed by peer" (or, when the rank
    # left while they were reading, "Connection reset by peer"): name the origin.
    origin = next((o for o in failed if not any(e in o.error for e in _PEER_ECHOES)), failed[0])
    first_line = origin.error.splitlines()[0] if origin.error else "no answer"
    return ContractViolation(
        rule,
        term,
        f"{what} failed on rank {origin.rank} of {len(outcomes)}: {first_line}",
        details={
            **details,
            "failed ranks": ", ".join(
                f"{o.rank} ({o.error.splitlines()[0] if o.error else '-'})" for o in failed
            ),
            "error": _first_lines(origin.error),
        },
    )


# --------------------------------------------------------------------------- C-DDP-1

_LOADED: dict[str, MetricsTarget] = {}


def _rank_batches(data: MetricData, shards: Partition, rank: int) -> list[MetricData]:
    """The ``update`` batches of ``rank``: its rows in two halves; none for an empty rank."""
    start, stop = shards.bounds()[rank]
    middle = (start + stop + 1) // 2
    return [data.rows(a, b) for a, b in ((start, middle), (middle, stop)) if b > a]


def _sync_job(rank: int, world_size: int, payload: Mapping[str, Any]) -> dict[str, Any]:
    """On one rank: feed this rank's part, ``sync_distributed()``, return the computed result."""
    spec = payload["spec"]
    if spec not in _LOADED:
        _LOADED[spec] = load_metrics_target(spec)
    metrics = _LOADED[spec]
    metric: str = payload["metric"]
    data: MetricData = payload["data"].to(_rank_device(payload["device"], rank))
    state = _new_state(metrics, metric, data)
    for part in _rank_batches(data, Partition(tuple(payload["shards"])), rank):
        state.update(*part.args())
    state.sync_distributed()
    result = _compute(state)
    # Numbers and the matrix as NumPy, device-free: what _compare_results reads.
    return {
        key: _matrix(value) if key == "confusion_matrix" else _number(value)
        for key, value in result.items()
        if key == "confusion_matrix" or key in _FAMILIES[metric][2]
    }


def _importable(metrics: MetricsTarget) -> None:
    try:
        module = importlib.import_module(metrics.spec)
    except Exception as exc:
        raise HarnessUsageError(
            f"distributed checks run the metrics target in fresh processes, so it must be "
            f"importable by name; {metrics.spec!r} is not: {exc}"
        ) from exc
    if module is not metrics.module:
        raise HarnessUsageError(
            f"distributed checks import the metrics target by name in fresh processes, but "
            f"{metrics.spec!r} does not name the module under test"
        )


def check_sync_distributed(
    metrics: MetricsTarget,
    data: MetricData,
    *,
    metric: str,
    shards: Partition,
    device: str = "cpu",
) -> None:
    """C-DDP-1: after ``sync_distributed()`` every rank holds the whole data set's metrics.

    ``shards`` splits the case's rows over ``len(shards.sizes)`` ranks in rank order (empty
    ranks allowed: they must still take part in every collective). Each rank builds a state
    from the target, feeds its rows, calls ``sync_distributed()`` and computes; every rank's
    result must equal one state fed all the data, confusion matrix (size included) exactly.

    Raises:
        ContractViolation: if the streaming class lacks ``sync_distributed``, a rank raises or
            hangs, or a rank's result differs.
        HarnessUsageError: if ``metric`` or ``shards`` do not fit the case, the target is not
            importable by name, or the process group cannot be started.
    """
    _family(metric, data)
    _check_shards(data.n_rows, shards)
    backend = _backend(device)
    replay = ReplaySpec.of(
        check_sync_distributed, "metrics", data=data, metric=metric, shards=shards, device=device
    )
    rule = "C-DDP-1"
    world = len(shards.sizes)
    row = (rule, metric, str(world), device, metrics.spec)
    if row in _HUNG:
        _raise_hung(row)
    details: dict[str, object] = {
        "input": data.describe(),
        "ranks": f"{world} ({backend} on {device}), rows per rank {list(shards.sizes)}",
    }
    cls_name = _FAMILIES[metric][1]
    if not callable(getattr(getattr(metrics, cls_name), "sync_distributed", None)):
        raise ContractViolation(
            rule,
            metric,
            f"{cls_name} has no sync_distributed(group=None) method, so its state cannot be "
            "synced across ranks",
            details={**details, "target": metrics.spec},
            replay=replay,
        )
    _importable(metrics)
    # One process fed every batch the ranks feed (all of the data; none when every rank is
    # empty, so an inferred K is learnt from the same updates).
    on_device = data.to(device)
    batches = [b for r in range(world) for b in _rank_batches(on_device, shards, r)]
    try:
        want = _compute(_fed(metrics, metric, on_device, batches))
    except Exception as exc:
        raise ContractViolation(
            rule,
            metric,
            f"one process fed all the data raised {type(exc).__name__}",
            details={**details, "error": f"{type(exc).__name__}: {exc}"},
            replay=replay,
        ) from exc
    payload = {
        "spec": metrics.spec,
        "metric": metric,
        "data": data,
        "shards": list(shards.sizes),
        "device": device,
    }
    outcomes = shared_pool(world, backend).run(_sync_job, payload, timeout=_job_timeout())
    violation = _failed(rule, metric, "update/sync_distributed/compute", outcomes, details)
    if violation is not None:
        violation = ContractViolation(
            violation.rule,
            violation.term,
            violation.headline,
            details=violation.details,
            replay=replay,
        )
        _fail_fast_on_timeout(row, outcomes, violation)
        raise violation
    for outcome in outcomes:
        _compare_results(
            rule,
            metric,
            data,
            outcome.value,
            want,
            headline=(
                f"rank {outcome.rank} of {world} after sync_distributed differs from one "
                "process fed all the data"
            ),
            details={**details, "rank": outcome.rank},
            replay=replay,
        )


# --------------------------------------------------------------------------- C-DDP-2


def _resolve_loss(gathered: str | GatheredLoss) -> tuple[str, GatheredLoss]:
    if isinstance(gathered, str):
        fn = resolve_qualified_name(gathered)
        name = gathered
    else:
        fn, name = gathered, qualified_name(gathered)
        if "<" in name or resolve_qualified_name(name) is not fn:
            raise HarnessUsageError(
                f"the gathered loss runs in fresh processes, so it must be a module-level "
                f"function importable as 'module:function'; {name!r} is not"
            )
    if not callable(fn):
        raise HarnessUsageError(f"gathered loss {name!r} is not callable")
    return name, fn


def _loss_job(rank: int, world_size: int, payload: Mapping[str, Any]) -> dict[str, Any]:
    """On one rank: the gathered loss of this rank's rows, and its gradient for them."""
    fn = resolve_qualified_name(payload["loss"])
    device = _rank_device(payload["device"], rank)
    batch: GatheredBatch = payload["batch"].to(device)
    start, stop = Partition(tuple(payload["shards"])).bounds()[rank]
    local = batch.rows(start, stop)
    emb = local.embeddings.clone().requires_grad_(True)
    value = fn(emb, local.sample_ids, batch.distances)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TypeError(f"the gathered loss returned {value!r}, not a one-element tensor")
    grad = None
    if value.requires_grad:
        (grad,) = torch.autograd.grad(value.sum(), [emb], allow_unused=True)
    return {
        "value": float(value.detach().double().cpu()),
        "grad": None if grad is None else grad.detach().double().cpu().tolist(),
    }


def _single_process(loss: LossTarget, batch: GatheredBatch) -> tuple[float, torch.Tensor]:
    """The loss target's base loss of the concatenated batch and its embedding gradient."""
    emb = batch.embeddings.clone().requires_grad_(True)
    value = loss.make().compute_base_loss(loss.pairwise_distances(emb), batch.target(), "unifrac")
    (grad,) = torch.autograd.grad(value, [emb], allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(emb)
    return float(value.detach().double().cpu()), grad.detach().double().cpu()


def check_gathered_base_loss(
    loss: LossTarget,
    batch: GatheredBatch,
    *,
    gathered: str | GatheredLoss,
    shards: Partition,
    device: str = "cpu",
) -> None:
    """C-DDP-2: the gathered loss on k ranks equals the single-process loss, gradients too.

    ``gathered(embeddings, sample_ids, distances)`` is called on every rank with that rank's
    rows (``shards`` splits the batch over the ranks in rank order; empty ranks allowed), their
    ids and the shared ``[N, N]`` table. Every rank's value must equal ``loss``'s
    ``compute_base_loss(pairwise_distances(E), distances[ids][:, ids], "unifrac")`` on the
    concatenated batch, and its gradient for its own rows the matching rows of that loss's
    gradient (the convention: every rank computes the global mean; summing the ranks' gradients
    of shared parameters gives the single-process gradient).

    Args:
        loss: the loss target (its single-process base loss is the answer).
        batch: the global batch.
        gathered: the gathered loss, a module-level function or its ``"module:function"``.
        shards: rows per rank.
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL, one GPU per rank).

    Raises:
        ContractViolation: if a rank raises or hangs, or a value or gradient differs.
        HarnessUsageError: if the loss is not importable by name, ``shards`` do not fit, or the
            process group cannot be started.
    """
    name, _ = _resolve_loss(gathered)
    _check_shards(batch.n_rows, shards)
    backend = _backend(device)
    replay = ReplaySpec.of(
        check_gathered_base_loss, "loss", batch=batch, gathered=name, shards=shards, device=device
    )
    rule, term = "C-DDP-2", "base_loss"
    world = len(shards.sizes)
    row = (rule, term, str(world), device, name)
    if row in _HUNG:
        _raise_hung(row)
    details: dict[str, object] = {
        "input": batch.describe(),
        "ranks": f"{world} ({backend} on {device}), rows per rank {list(shards.sizes)}",
        "gathered loss": name,
    }
    want, want_grad = _single_process(loss, batch)
    payload = {"loss": name, "batch": batch, "shards": list(shards.sizes), "device": device}
    outcomes = shared_pool(world, backend).run(_loss_job, payload, timeout=_job_timeout())
    violation = _failed(rule, term, "the gathered loss", outcomes, details)
    if violation is not None:
        violation = ContractViolation(
            violation.rule,
            violation.term,
            violation.headline,
            details=violation.details,
            replay=replay,
        )
        _fail_fast_on_timeout(row, outcomes, violation)
        raise violation
    size, dim = batch.n_rows, int(batch.embeddings.shape[1])
    n = max(size * (size - 1), 1) * dim
    distances = reference_pairwise_distances(batch.embeddings)
    residual = distances - batch.target().double().numpy()
    scale = 2.0 * float(abs(distances).max(initial=0.0)) * float(abs(residual).max(initial=0.0))
    value_tol = tolerance(batch.dtype, n=n, scale=scale)
    grad_tol = tolerance(
        batch.dtype, n=n, scale=float(want_grad.abs().max()) if want_grad.numel() else 0.0
    )
    for outcome, (start, stop) in zip(outcomes, shards.bounds(), strict=True):
        value = outcome.value["value"]
        at = {**details, "rank": f"{outcome.rank} (rows {start}:{stop})"}
        if not abs(value - want) <= value_tol.atol + value_tol.rtol * abs(want):
            raise ContractViolation(
                rule,
                term,
                f"rank {outcome.rank} of {world}: gathered loss {value!r} differs from the "
                f"single-process loss {want!r} on the concatenated batch",
                details={
                    **at,
                    "difference": f"{abs(value - want):.6g}",
                    "tolerance": value_tol.describe(),
                },
                replay=replay,
            )
        expected = want_grad[start:stop]
        if outcome.value["grad"] is None:
            if stop > start and bool((expected != 0).any()):
                raise ContractViolation(
                    rule,
                    term,
                    f"rank {outcome.rank} of {world}: no gradient reaches its local embeddings",
                    details={**at, "expected gradient": expected.tolist()},
                    replay=replay,
                )
            continue
        got = torch.tensor(outcome.value["grad"], dtype=torch.float64).reshape(expected.shape)
        comparison = mismatch(got, expected, grad_tol)
        if comparison is not None:
            raise ContractViolation(
                rule,
                term,
                f"rank {outcome.rank} of {world}: gradient of its local embeddings differs "
                "from its rows of the single-process gradient",
                details={
                    **at,
                    "got": got.tolist(),
                    "expected": expected.tolist(),
                    "comparison": comparison,
                    "tolerance": grad_tol.describe(),
                },
                replay=replay,
            )
