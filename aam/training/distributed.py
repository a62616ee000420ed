"""Distributed helpers: gathering ragged per-rank batches and the gathered UniFrac base loss.

Under data parallelism (DDP/FSDP) each rank sees only its shard of the global batch. The
pairwise UniFrac base term compares *pairs* of samples, so a per-rank loss only ever compares
samples within one shard (a block-diagonal loss, numerically the same as not gathering at all).
:func:`gathered_base_loss` compares every pair of the global batch instead: it gathers the
embeddings and the samples' identities from every rank (per-rank batch sizes may differ, an
empty rank included), looks the true distance of every pair up in a table the caller provides,
and computes exactly the single-process loss on the concatenated batch.

Conventions (contract rule C-DDP-2):

* **Value**: every rank returns the same value, the global mean over all off-diagonal pairs of
  the global batch (``MultiTaskLoss.compute_base_loss`` on ``compute_pairwise_distances`` of the
  concatenated embeddings), not the mean of per-rank losses.
* **Gradients**: the other ranks' embeddings arrive as constants; this rank's slice of the
  gathered tensor *is* its local ``embeddings`` (autograd-connected). So the gradient a rank
  gets for its local embeddings equals the corresponding rows of the single-process gradient.
  For parameters shared by every rank (the model's), the single-process gradient is the *sum*
  over ranks of the per-rank gradients. DDP *averages* gradients across ``k`` ranks, so to
  reproduce the single-process step under DDP, scale the loss by ``k``
  (``loss * dist.get_world_size()``) before ``backward`` and log the unscaled value.
* **No process group** (``torch.distributed`` unavailable or not initialized): the loss is the
  single-process loss on the local batch, the same as a world of one.
* **Order**: the global batch is the concatenation of the ranks' batches in rank order.
  Samples repeated across ranks (``DistributedSampler`` pads by repeating samples) are
  compared like any other pair, exactly as the single process fed the same rows would.

Validation never leaves peers waiting: every rank first takes part in one small collective that
carries its shape, dtype and whether its own input is valid; then every rank raises
``ValueError`` together (the rank with the bad input names the tensor and both shapes, its peers
name that rank), instead of one rank raising while the others block in a collective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import torch
import torch.distributed as dist
from torch import Tensor

from aam.training._collectives import (
    all_gather_stacked,
    communication_device,
    is_distributed,
)
from aam.training.losses import MultiTaskLoss, compute_pairwise_distances

__all__ = [
    "DistanceLookup",
    "all_gather_stacked",
    "communication_device",
    "gathered_base_loss",
    "is_distributed",
]

#: The true distances of the global batch: an ``[N, N]`` tensor indexed by sample id, or a
#: callable mapping the global batch's ``[B]`` int64 ids to its ``[B, B]`` distance matrix.
DistanceLookup: TypeAlias = Tensor | Callable[[Tensor], Tensor]

_TERM = "gathered_base_loss"
_I64 = torch.int64
# Codes that travel in the metadata collective (index into this tuple; -1: not floating).
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# compute_base_loss does not depend on the penalties: one instance serves every call.
_BASE = MultiTaskLoss()


def _gather_padded(
    local: Tensor, sizes: list[int], group: dist.ProcessGroup | None
) -> list[Tensor]:
    """Each rank's ``[sizes[r], ...]`` rows: pad to the largest size, all_gather, unpad."""
    comm = communication_device(group)
    biggest = max(sizes)
    sent = local.detach().to(comm)
    if sent.shape[0] < biggest:
        pad = sent.new_zeros((biggest - sent.shape[0], *sent.shape[1:]))
        sent = torch.cat([sent, pad])
    sent = sent.contiguous()
    out = [torch.empty_like(sent) for _ in sizes]
    dist.all_gather(out, sent, group=group)
    return [rows[:n].to(local.device) for rows, n in zip(out, sizes, strict=True)]


def _dtype_code(t: Tensor) -> int:
    return _FLOAT_DTYPES.index(t.dtype) if t.dtype in _FLOAT_DTYPES else -1


def _gather_meta(values: list[int], group: dist.ProcessGroup | None) -> list[list[int]]:
    """Every rank's list of small integers (same length everywhere), in rank order."""
    comm = communication_device(group)
    rows: list[list[int]] = all_gather_stacked(
        torch.tensor(values, dtype=_I64, device=comm), group=group
    ).tolist()
    return rows


# --------------------------------------------------------------------------- the gathered loss


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _local_problem(embeddings: object, sample_ids: object, distances: object) -> str | None:
    """What is wrong with this rank's arguments (``None`` when nothing is)."""
    if not isinstance(embeddings, Tensor):
        return f"{_TERM}: embeddings must be a torch.Tensor, got {type(embeddings).__name__}"
    if _dtype_code(embeddings) < 0:
        return (
            f"{_TERM}: embeddings must be floating ({', '.join(map(str, _FLOAT_DTYPES))}), got "
            f"dtype {embeddings.dtype}"
        )
    if embeddings.dim() != 2 or embeddings.shape[1] == 0:
        return (
            f"{_TERM}: embeddings must be [B, D] with D >= 1 (B may be 0 on an empty rank), got "
            f"shape {_shape(embeddings)}"
        )
    if not isinstance(sample_ids, Tensor):
        return f"{_TERM}: sample_ids must be a torch.Tensor, got {type(sample_ids).__name__}"
    if sample_ids.is_floating_point() or sample_ids.is_complex() or sample_ids.dtype == torch.bool:
        return f"{_TERM}: sample_ids must hold integer ids, got dtype {sample_ids.dtype}"
    if _shape(sample_ids) != _shape(embeddings)[:1]:
        return (
            f"{_TERM}: sample_ids shape {_shape(sample_ids)} does not match embeddings "
            f"{_shape(embeddings)}; expected ({embeddings.shape[0]},), one id per row"
        )
    if isinstance(distances, Tensor):
        if distances.dim() != 2 or distances.shape[0] != distances.shape[1]:
            return (
                f"{_TERM}: distances must be the [N, N] matrix indexed by sample id, got shape "
                f"{_shape(distances)}"
            )
        if not distances.is_floating_point():
            return f"{_TERM}: distances must be floating, got dtype {distances.dtype}"
    elif not callable(distances):
        return (
            f"{_TERM}: distances must be an [N, N] tensor or a callable ids -> [B, B], got "
            f"{type(distances).__name__}"
        )
    return None


def _lookup(distances: DistanceLookup, ids: Tensor, device: torch.device) -> Tensor:
    """The ``[B, B]`` true distances of the global batch's ids (identical on every rank)."""
    size = int(ids.shape[0])
    if isinstance(distances, Tensor):
        n = int(distances.shape[0])
        if size:
            low, high = torch.stack([ids.min(), ids.max()]).tolist()
            if low < 0 or high >= n:
                outside = (ids < 0) | (ids >= n)
                first = int(torch.nonzero(outside)[0, 0])
                raise ValueError(
                    f"{_TERM}: {int(outside.sum())} sample id(s) of the global batch lie outside "
                    f"[0, {n}) of the distances {_shape(distances)}; first at global position "
                    f"{first} = {int(ids[first])}"
                )
        rows = ids.to(distances.device)
        return distances.index_select(0, rows).index_select(1, rows).to(device)
    target = distances(ids)
    if not isinstance(target, Tensor) or _shape(target) != (size, size):
        got = _shape(target) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(
            f"{_TERM}: the distances callable must return the [B, B] = {(size, size)} matrix of "
            f"the global batch's ids, got {got}"
        )
    return target.to(device)


def gathered_base_loss(
    embeddings: Tensor,
    sample_ids: Tensor,
    distances: DistanceLookup,
    *,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """The pairwise UniFrac base loss over the *global* batch, gathered from every rank.

    Equal to ``MultiTaskLoss().compute_base_loss(compute_pairwise_distances(E), T, "unifrac")``
    where ``E`` concatenates every rank's embeddings in rank order and ``T`` holds the true
    distance of every pair, cross-rank pairs included. Every rank gets the same value; this
    rank's embeddings get the rows of the single-process gradient that belong to them. Under
    DDP (which averages gradients over ``k`` ranks) scale the loss by ``k`` before ``backward``
    to reproduce the single-process step; see the module doc for the conventions.

    A collective: every rank of ``group`` must call it once per step, a rank with no samples
    included (``embeddings`` ``[0, D]``, ``sample_ids`` ``[0]``).

    Args:
        embeddings: ``[B_r, D]`` this rank's sample embeddings (``B_r`` may differ by rank or
            be 0; ``D`` and the dtype must agree across ranks).
        sample_ids: ``[B_r]`` integer identities of this rank's samples.
        distances: the ``[N, N]`` true distance matrix indexed by sample id (any device), or a
            callable mapping the global ``[B]`` int64 ids to their ``[B, B]`` distances.
        group: the process group (default: the default group; none initialized: local only).

    Returns:
        0-dim tensor (float32 for half embeddings, else their dtype); 0 for a global batch of
        fewer than two samples.

    Raises:
        ValueError: on every rank, when any rank's arguments are invalid (message names the
            tensor and both shapes, or the rank at fault), ranks disagree on ``D`` or dtype,
            a sample id lies outside the matrix, or the callable returns a wrong shape.
        NonFiniteOutputError: if an embedding-derived distance or a target is NaN/inf.

    Example:
        >>> import torch
        >>> emb = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
        >>> table = torch.tensor([[0.0, 9.0, 5.0], [9.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
        >>> gathered_base_loss(emb, torch.tensor([0, 2]), table).item()  # no process group
        0.0
    """
    problem = _local_problem(embeddings, sample_ids, distances)
    if not is_distributed():
        if problem is not None:
            raise ValueError(problem)
        ids = sample_ids.to(device=embeddings.device, dtype=_I64)
        return _BASE.compute_base_loss(
            compute_pairwise_distances(embeddings),
            _lookup(distances, ids, embeddings.device),
            "unifrac",
        )
    rank = dist.get_rank(group)
    if problem is None:
        meta = [embeddings.shape[0], embeddings.shape[1], _dtype_code(embeddings), 0]
    else:
        meta = [0, -1, -1, 1]
    rows = _gather_meta(meta, group)
    at_fault = [r for r, row in enumerate(rows) if row[3]]
    if at_fault:
        if problem is not None:
            raise ValueError(f"{problem} (on rank {rank})")
        raise ValueError(
            f"{_TERM}: rank(s) {at_fault} passed invalid arguments (see their error); every "
            "rank stops here so none is left waiting in a collective"
        )
    if len({(row[1], row[2]) for row in rows}) > 1:
        described = ", ".join(
            f"rank {r}: embeddings {(row[0], row[1])} {_FLOAT_DTYPES[row[2]]}"
            for r, row in enumerate(rows)
        )
        raise ValueError(
            f"{_TERM}: every rank's embeddings must share D and dtype, got {described}"
        )
    sizes = [row[0] for row in rows]
    if max(sizes) == 0:
        global_emb, ids = embeddings, sample_ids.to(device=embeddings.device, dtype=_I64)
    else:
        pieces = _gather_padded(embeddings, sizes, group)
        pieces[rank] = embeddings  # the local block stays connected to the graph
        global_emb = torch.cat(pieces)
        local_ids = sample_ids.to(device=embeddings.device, dtype=_I64)
        ids = torch.cat(_gather_padded(local_ids, sizes, group))
    target = _lookup(distances, ids, embeddings.device)
    return _BASE.compute_base_loss(compute_pairwise_distances(global_emb), target, "unifrac")
