"""Wall-clock timing: medians over repeats after warm-up, candidates interleaved.

Candidates compared side by side are timed round-robin (A, B, A, B, ...) rather than one
after the other, so that a slow spell on a shared machine hits every candidate alike instead
of biasing one ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["Timing", "compare", "synchronizer"]


@dataclass(frozen=True)
class Timing:
    """Summary of the wall-clock seconds of one candidate's repeats.

    Attributes:
        median_s: median over the timed repeats (the number every ratio uses).
        min_s: fastest repeat.
        max_s: slowest repeat.
        repeats: how many repeats were timed (warm-up runs excluded).
    """

    median_s: float
    min_s: float
    max_s: float
    repeats: int

    def to_plain(self) -> dict[str, float | int]:
        """The summary as JSON-ready numbers."""
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "repeats": self.repeats,
        }


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (a no-op on the cpu).

    Asynchronous devices return from a call before the work is done; timing without waiting
    would measure only the launch.
    """
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def compare(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time each candidate ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Args:
        candidates: name -> zero-argument callable doing one unit of work.
        repeats: timed rounds, >= 1.
        warmup: untimed rounds first (allocator, caches, lazy initialisation), >= 0.
        sync: called after each call, inside the timed region (see :func:`synchronizer`).

    Returns:
        name -> :class:`Timing`, in the order of ``candidates``.

    Raises:
        ValueError: if ``repeats < 1``, ``warmup < 0`` or there is no candidate.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got repeats={repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got warmup={warmup}")
    if not candidates:
        raise ValueError("compare needs at least one candidate")
    wait = sync or (lambda: None)
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
            wait()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            wait()
            samples[name].append(time.perf_counter() - start)
    return {
        name: Timing(statistics.median(s), min(s), max(s), len(s)) for name, s in samples.items()
    }
