"""Hypothesis strategies for distributed checks: per-rank shards and gathered-loss batches.

A data set is split across ``world_size`` ranks as a :class:`~robustness.strategies.Partition`
with exactly one (possibly empty) part per rank, in rank order: ``shards`` draws uneven splits,
with at least one empty rank on request. A :class:`GatheredBatch` is the global batch of the
gathered UniFrac loss: embeddings, the samples' identities and the full distance table they
index into (ids are not row positions, so a loss that confuses the two is caught).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustness.errors import HarnessUsageError
from robustness.strategies._batches import embeddings
from robustness.strategies._metric_data import Partition, partitions

__all__ = ["GATHERED_DTYPES", "GatheredBatch", "gathered_batches", "sharded", "shards"]

#: Embedding dtypes of gathered batches: gathering changes no precision, so the half dtypes
#: (judged by C-DTYPE-1 in one process) add nothing here.
GATHERED_DTYPES = (torch.float64, torch.float32)


def shards(n: int, world_size: int, *, min_empty: int = 0) -> st.SearchStrategy[Partition]:
    """Uneven splits of ``n`` items over ``world_size`` ranks (one part per rank, rank order).

    Args:
        n: number of items (>= 0).
        world_size: number of ranks (>= 1).
        min_empty: at least this many ranks get no item (at drawn positions).

    Raises:
        HarnessUsageError: if ``n < 0``, ``world_size < 1`` or ``min_empty`` is out of range.
    """
    if n < 0 or world_size < 1 or not 0 <= min_empty <= world_size:
        raise HarnessUsageError(
            f"need n >= 0, world_size >= 1 and 0 <= min_empty <= world_size, got n={n}, "
            f"{world_size=}, {min_empty=}"
        )
    if min_empty == world_size:
        if n:
            raise HarnessUsageError(f"cannot leave all {world_size} ranks empty with n={n}")
        return st.just(Partition((0,) * world_size))
    busy = world_size - min_empty

    @st.composite
    def draw_shards(draw: st.DrawFn) -> Partition:
        sizes = list(draw(partitions(n, min_batches=busy, max_batches=busy)).sizes)
        for _ in range(min_empty):
            sizes.insert(draw(st.integers(0, len(sizes))), 0)
        return Partition(tuple(sizes))

    return draw_shards()


def sharded(
    data: st.SearchStrategy[Any], world_size: int, *, min_empty: int | None = None
) -> st.SearchStrategy[tuple[Any, Partition]]:
    """Pairs ``(case, shards of case.n_rows over world_size ranks)`` for distributed checks.

    ``min_empty=None`` draws 0 or 1 (with one rank or more than one row to spare), so an
    empty rank is common rather than rare.
    """
    if world_size < 1:
        raise HarnessUsageError(f"world_size must be >= 1, got {world_size=}")

    def split(case: Any) -> st.SearchStrategy[tuple[Any, Partition]]:
        if min_empty is None:
            empties = st.integers(0, 1) if world_size > 1 else st.just(0)
        else:
            empties = st.just(min_empty)
        return empties.flatmap(
            lambda k: st.tuples(st.just(case), shards(case.n_rows, world_size, min_empty=k))
        )

    return data.flatmap(split)


@dataclass(frozen=True)
class GatheredBatch:
    """A global batch for the gathered UniFrac loss.

    Attributes:
        embeddings: ``[B, D]`` sample embeddings (``B`` may be 0).
        sample_ids: ``[B]`` int64 distinct ids, rows of ``distances``.
        distances: ``[N, N]`` symmetric true distances (zero diagonal), ``N >= B``.
    """

    embeddings: torch.Tensor
    sample_ids: torch.Tensor
    distances: torch.Tensor

    @property
    def n_rows(self) -> int:
        """Number of samples B."""
        return int(self.embeddings.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the embeddings."""
        return self.embeddings.dtype

    def target(self) -> torch.Tensor:
        """``[B, B]`` true distances of the batch's samples (``distances[ids][:, ids]``)."""
        return self.distances[self.sample_ids][:, self.sample_ids]

    def rows(self, start: int, stop: int) -> GatheredBatch:
        """Samples ``start:stop`` (the distance table is shared by every rank)."""
        return GatheredBatch(
            self.embeddings[start:stop], self.sample_ids[start:stop], self.distances
        )

    def to(self, device: str | torch.device) -> GatheredBatch:
        """Copy on ``device``."""
        return GatheredBatch(
            self.embeddings.to(device), self.sample_ids.to(device), self.distances.to(device)
        )

    def describe(self) -> str:
        """One readable line: shapes, dtype, ids, embeddings."""
        emb = self.embeddings.detach().cpu().double()
        values = emb.tolist() if emb.numel() <= 24 else f"in [{emb.min():.6g}, {emb.max():.6g}]"
        return (
            f"gathered batch {str(self.dtype).removeprefix('torch.')}: embeddings "
            f"{tuple(self.embeddings.shape)} = {values}; sample_ids "
            f"{self.sample_ids.tolist()}; distances {tuple(self.distances.shape)}"
        )

    __repr__ = describe

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a repro file."""
        return {
            "embeddings": self.embeddings,
            "sample_ids": self.sample_ids,
            "distances": self.distances,
        }

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> GatheredBatch:
        """Inverse of :meth:`to_plain`."""
        return cls(data["embeddings"], data["sample_ids"], data["distances"])


def gathered_batches(
    *,
    min_batch: int = 0,
    max_batch: int = 8,
    max_dim: int = 3,
    max_extra_ids: int = 3,
    dtype: torch.dtype | None = None,
) -> st.SearchStrategy[GatheredBatch]:
    """Global batches for the gathered loss: embeddings with (near-)duplicate rows, ids, table.

    The ids are ``B`` distinct values drawn from ``0..N-1`` with ``N = B + extra`` in a drawn
    order; the table is symmetric with a zero diagonal and entries in ``[0, 2]``.

    Raises:
        HarnessUsageError: on out-of-range sizes or a dtype outside :data:`GATHERED_DTYPES`.
    """
    if not 0 <= min_batch <= max_batch or max_dim < 1 or max_extra_ids < 0:
        raise HarnessUsageError(
            f"need 0 <= min_batch <= max_batch, max_dim >= 1 and max_extra_ids >= 0, got "
            f"{min_batch=}, {max_batch=}, {max_dim=}, {max_extra_ids=}"
        )
    if dtype is not None and dtype not in GATHERED_DTYPES:
        raise HarnessUsageError(f"dtype must be one of {GATHERED_DTYPES} or None, got {dtype}")
    dtypes = GATHERED_DTYPES if dtype is None else (dtype,)

    @st.composite
    def draw_batch(draw: st.DrawFn) -> GatheredBatch:
        chosen = draw(st.sampled_from(dtypes))
        b = draw(st.integers(min_batch, max_batch))
        dim = draw(st.integers(1, max_dim))
        if b:
            emb = draw(embeddings(min_batch=b, max_batch=b, dim=dim, dtype=chosen))
        else:
            emb = torch.zeros((0, dim), dtype=chosen)
        n = b + draw(st.integers(0, max_extra_ids))
        order = draw(st.permutations(range(n))) if n else []
        ids = torch.tensor(list(order[:b]), dtype=torch.int64)
        upper = draw(
            hnp.arrays(
                np.float64,
                (n, n),
                elements=st.floats(0.0, 2.0, width=32, allow_subnormal=False),
            )
        )
        table = np.triu(upper, 1)
        table = table + table.T
        return GatheredBatch(emb, ids, torch.from_numpy(table).to(chosen))

    return draw_batch()
