"""Deliberately broken distributed metrics and gathered losses (a metrics target by name).

The distributed checks run the code under test in fresh worker processes, so broken variants
must be importable by name: this module is a metrics target (``aam``'s metrics, with broken
``sync_distributed`` methods swapped in) and holds broken gathered losses as module-level
functions. Each is a plausible bug:

* ``StreamingRegressionMetrics``: sums M2 over ranks and averages the means without weighting
  by counts (the between-rank spread of the means is lost, so R² is wrong).
* ``StreamingCountMetrics``: rank 1 raises (a failure that must travel back with its message).
* ``block_diagonal_base_loss``: each rank compares only the pairs inside its own block and
  all-reduces the mean of the per-rank losses (numerically the same as not gathering).
* ``grad_summing_base_loss``: gathers with the autograd-aware ``torch.distributed.nn``
  all_gather, whose backward sums every rank's gradient into each slice: the value is right,
  the local gradient is ``world_size`` times the single-process one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from aam.training import metrics as _aam
from aam.training.losses import MultiTaskLoss, compute_pairwise_distances
from aam.training.metrics import (
    StreamingClassificationMetrics,
    compute_classification_metrics,
    compute_count_metrics,
    compute_regression_metrics,
)

__all__ = [
    "MultiTaskLoss",
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
    "StreamingRegressionMetrics",
    "block_diagonal_base_loss",
    "compute_classification_metrics",
    "compute_count_metrics",
    "compute_pairwise_distances",
    "compute_regression_metrics",
    "grad_summing_base_loss",
]


class StreamingRegressionMetrics(_aam.StreamingRegressionMetrics):
    def sync_distributed(self, group=None):
        world = dist.get_world_size(group)
        count = torch.tensor([self._n], dtype=torch.int64)
        sums = torch.stack([self._mean, self._m2, self._abs, self._sq])
        lo, hi = self._lo.clone(), self._hi.clone()
        for t, op in ((count, dist.ReduceOp.SUM), (sums, dist.ReduceOp.SUM)):
            dist.all_reduce(t, op=op, group=group)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
        self._n = int(count)
        self._mean = sums[0] / world  # the bug: every rank's mean weighs the same
        self._m2, self._abs, self._sq = sums[1], sums[2], sums[3]
        self._lo, self._hi = lo, hi


class StreamingCountMetrics(_aam.StreamingCountMetrics):
    def sync_distributed(self, group=None):
        if dist.get_rank(group) == 1:
            raise RuntimeError("rank 1 lost its state")
        super().sync_distributed(group)


def block_diagonal_base_loss(embeddings, sample_ids, distances, *, group=None):
    ids = sample_ids.long()
    local = MultiTaskLoss().compute_base_loss(
        compute_pairwise_distances(embeddings), distances[ids][:, ids], "unifrac"
    )
    total = local.detach().clone()
    dist.all_reduce(total, group=group)
    # The value is the mean of the per-rank losses; the gradient stays the local one.
    return local + (total / dist.get_world_size(group) - local.detach())


def grad_summing_base_loss(embeddings, sample_ids, distances, *, group=None):
    sizes = torch.tensor([embeddings.shape[0]])
    all_sizes = [torch.zeros_like(sizes) for _ in range(dist.get_world_size(group))]
    dist.all_gather(all_sizes, sizes, group=group)
    counts = [int(s) for s in all_sizes]
    pad = max(counts) - embeddings.shape[0]
    padded = torch.cat([embeddings, embeddings.new_zeros((pad, embeddings.shape[1]))])
    pieces = dist_fn.all_gather(padded, group=group or dist.group.WORLD)
    emb = torch.cat([p[:n] for p, n in zip(pieces, counts, strict=True)])
    id_pieces = [torch.zeros(max(counts), dtype=torch.int64) for _ in counts]
    ids = torch.cat([sample_ids.long(), torch.zeros(pad, dtype=torch.int64)])
    dist.all_gather(id_pieces, ids, group=group)
    all_ids = torch.cat([p[:n] for p, n in zip(id_pieces, counts, strict=True)])
    return MultiTaskLoss().compute_base_loss(
        compute_pairwise_distances(emb), distances[all_ids][:, all_ids], "unifrac"
    )


def skip_collective_on_rank_1(rank, world_size, payload):
    """A pool job where rank 1 returns early, like a sync that skips an empty rank."""
    if rank == 1:
        return None
    total = torch.ones(1)
    dist.all_reduce(total)
    return float(total)
