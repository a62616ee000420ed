"""Issue 13's performance targets, measured in one process at 1 and 2 torch threads.

Every target is a ratio of medians of candidates timed round-robin in the same process
(:func:`benchmarks._timing.compare`), so a slow spell on a shared machine hits both sides of
a ratio alike. The compute floor of the nucleotide term is one ``exp`` pass and one ``clone``
over its logits (each allocating its output, as any op a user writes does). "Plain torch" is
the faster of the two textbook baselines of :mod:`benchmarks._loss` (multiplicative masks,
or boolean selection), except for ``nuc_loss`` against boolean-selection ``F.cross_entropy``
as the issue names it. The gate-timing targets are measured by ``--gate`` (another helper's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from aam.training.losses import MultiTaskLoss
from benchmarks._loss import LossBatch, LossSizes, loss_candidates, make_loss_batch
from benchmarks._timing import Timing, compare, synchronizer

__all__ = ["TARGET_LIMITS", "THREADS", "bench_targets"]

#: Thread counts every target is measured at.
THREADS = (1, 2)

#: name -> (what is measured, limit of the ratio). A target is met when ratio <= limit.
TARGET_LIMITS: dict[str, tuple[str, float]] = {
    "nuc_vs_select": ("nuc_loss fwd+bwd / boolean-selection F.cross_entropy", 0.5),
    "nuc_vs_exp_floor": ("nuc_loss fwd+bwd / one exp pass over the logits", 4.0),
    "total_vs_plain": ("total_loss fwd+bwd / plain torch", 0.6),
    "count_vs_plain": ("count_loss fwd+bwd / plain torch (B)", 1.5),
    "base_vs_plain": ("base_loss (embeddings) fwd+bwd / cdist + mse (B)", 1.5),
    "target_vs_plain": ("target_loss fwd+bwd / plain torch (B)", 1.5),
    "pairwise_b128_vs_cdist": ("base_loss (embeddings) fwd+bwd / cdist + mse (8B)", 2.0),
}


def _floor_candidates(batch: LossBatch) -> dict[str, Callable[[], None]]:
    logits = batch.outputs["nuc_predictions"].detach()

    def exp_pass() -> None:
        torch.exp(logits)

    def clone_pass() -> None:
        logits.clone()

    return {"exp": exp_pass, "clone": clone_pass}


def _plain(timings: dict[str, Timing]) -> float:
    return min(timings["baseline_mul"].median_s, timings["baseline_select"].median_s)


def _at_threads(
    sizes: LossSizes, *, repeats: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    sync = synchronizer(device)
    loss_fn = MultiTaskLoss().to(device)
    batch = make_loss_batch(sizes, device=device)
    seconds: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}

    def timed(name: str, candidates: dict[str, Callable[[], None]]) -> dict[str, Timing]:
        result = compare(candidates, repeats=repeats, warmup=warmup, sync=sync)
        seconds[name] = {k: t.median_s for k, t in result.items()}
        return result

    nuc = timed(
        "nuc_loss", {**loss_candidates(batch, loss_fn, "nuc_loss"), **_floor_candidates(batch)}
    )
    ratios["nuc_vs_select"] = nuc["aam"].median_s / nuc["baseline_select"].median_s
    ratios["nuc_vs_exp_floor"] = nuc["aam"].median_s / nuc["exp"].median_s
    ratios["nuc_vs_clone_floor"] = nuc["aam"].median_s / nuc["clone"].median_s
    total = timed("total_loss", loss_candidates(batch, loss_fn))
    ratios["total_vs_plain"] = total["aam"].median_s / _plain(total)
    for term, key in (("count_loss", "count"), ("base_loss", "base"), ("target_loss", "target")):
        small = timed(term, loss_candidates(batch, loss_fn, term))
        ratios[f"{key}_vs_plain"] = small["aam"].median_s / _plain(small)
    wide = make_loss_batch(sizes.scaled(batch=8), device=device)  # B = 128 by default
    pairwise = timed("base_loss_b128", loss_candidates(wide, loss_fn, "base_loss"))
    ratios["pairwise_b128_vs_cdist"] = pairwise["aam"].median_s / _plain(pairwise)
    return {"seconds": seconds, "ratios": ratios}


def bench_targets(
    sizes: LossSizes,
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    threads: Sequence[int] = THREADS,
) -> dict[str, Any]:
    """Measure every target of :data:`TARGET_LIMITS` at each thread count.

    Args:
        sizes: the realistic batch (the pairwise target uses ``B * 8``).
        repeats: timed rounds (medians reported).
        warmup: untimed rounds first.
        device: where to run.
        threads: ``torch.set_num_threads`` values; the previous setting is restored.

    Returns:
        JSON-ready ``{"limits": {...}, "by_threads": {"1": {"seconds", "ratios",
        "met"}, ...}}``.
    """
    before = torch.get_num_threads()
    by_threads: dict[str, Any] = {}
    try:
        for count in threads:
            torch.set_num_threads(count)
            measured = _at_threads(sizes, repeats=repeats, warmup=warmup, device=device)
            measured["met"] = {
                name: measured["ratios"][name] <= limit
                for name, (_, limit) in TARGET_LIMITS.items()
            }
            by_threads[str(count)] = measured
    finally:
        torch.set_num_threads(before)
    return {
        "limits": {
            name: {"what": what, "max_ratio": limit}
            for name, (what, limit) in TARGET_LIMITS.items()
        },
        "by_threads": by_threads,
    }
