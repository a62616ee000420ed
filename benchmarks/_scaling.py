"""How cost grows: loss time as B, A and L double, pairwise term as B doubles, streaming as N x10.

Each curve is summarised by its growth exponent, the least-squares slope of log(time) against
log(size): 1 means linear, 2 quadratic. The contract's expectation is linear in B·A·L for the
masked terms and B² only for the pairwise UniFrac term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from aam.training.losses import MultiTaskLoss
from benchmarks._loss import LossSizes, loss_candidates, make_loss_batch
from benchmarks._metrics import METRIC_FAMILIES, make_stream, run_aam
from benchmarks._timing import compare, synchronizer

__all__ = [
    "bench_scaling",
    "growth_exponent",
    "matplotlib_available",
    "plot_scaling",
]

#: Multipliers applied to one loss size at a time.
LOSS_FACTORS = (0.5, 1.0, 2.0)
#: Multipliers of B for the pairwise term alone (its B² shows only over a wider range).
PAIRWISE_FACTORS = (1.0, 2.0, 4.0, 8.0)


def growth_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of ``log(seconds)`` against ``log(sizes)``.

    Raises:
        ValueError: with fewer than two distinct positive sizes or a non-positive time.
    """
    if len(sizes) != len(seconds) or len(set(sizes)) < 2:
        raise ValueError(f"need >= 2 distinct sizes with one time each, got {sizes}, {seconds}")
    if min(sizes) <= 0 or min(seconds) <= 0:
        raise ValueError(f"sizes and times must be > 0, got {sizes}, {seconds}")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def _loss_curve(
    base: LossSizes,
    dim: str,
    factors: Sequence[float],
    *,
    term: str | None,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    loss_fn = MultiTaskLoss().to(device)
    points: list[dict[str, Any]] = []
    for factor in factors:
        sizes = base.scaled(**{dim: factor})
        batch = make_loss_batch(sizes, device=device)
        candidates = loss_candidates(batch, loss_fn, term)
        timings = compare(
            {k: candidates[k] for k in ("aam", "baseline_mul")},
            repeats=repeats,
            warmup=warmup,
            sync=synchronizer(device),
        )
        points.append(
            {
                "size": getattr(sizes, dim),
                "aam_s": timings["aam"].median_s,
                "baseline_mul_s": timings["baseline_mul"].median_s,
            }
        )
        del batch
    xs = [p["size"] for p in points]
    return {
        "dim": dim,
        "term": term or "total_loss",
        "points": points,
        "exponent": {
            "aam": growth_exponent(xs, [p["aam_s"] for p in points]),
            "baseline_mul": growth_exponent(xs, [p["baseline_mul_s"] for p in points]),
        },
    }


def _stream_curve(
    family: str,
    ns: Sequence[int],
    *,
    mean_batch: int,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    for n in ns:
        stream = make_stream(family, n, mean_batch, device=device, seed=4)
        timing = compare(
            {"aam": partial(run_aam, stream)},
            repeats=repeats,
            warmup=warmup,
            sync=synchronizer(device),
        )["aam"]
        points.append({"size": stream.elements, "aam_s": timing.median_s})
    return {
        "family": family,
        "mean_batch": mean_batch,
        "points": points,
        "exponent": {
            "aam": growth_exponent([p["size"] for p in points], [p["aam_s"] for p in points])
        },
    }


def bench_scaling(
    base: LossSizes,
    stream_ns: Sequence[int],
    *,
    mean_batch: int,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    """Growth of the loss (full, per dimension), the pairwise term (B) and streaming (N).

    Args:
        base: the loss sizes the factors multiply.
        stream_ns: element counts for the streaming curves (e.g. 1e4, 1e5, 1e6).
        mean_batch: mean elements per streaming ``update``.
        repeats: timed rounds per point.
        warmup: untimed rounds per point.
        device: where to run.

    Returns:
        JSON-ready ``{"loss": [curve per dim], "pairwise": curve, "streaming": [curve per
        family]}``; each curve has ``points`` and the fitted ``exponent``.
    """
    loss_curve = partial(_loss_curve, repeats=repeats, warmup=warmup, device=device)
    stream_curve = partial(
        _stream_curve, mean_batch=mean_batch, repeats=repeats, warmup=warmup, device=device
    )
    return {
        "loss": [
            loss_curve(base, dim, LOSS_FACTORS, term=None) for dim in ("batch", "asvs", "length")
        ],
        "pairwise": loss_curve(base, "batch", PAIRWISE_FACTORS, term="base_loss"),
        "streaming": [stream_curve(family, stream_ns) for family in METRIC_FAMILIES],
    }


def matplotlib_available() -> bool:
    """Whether the optional ``matplotlib`` (the ``bench`` extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_scaling(scaling: dict[str, Any], path: Path, *, title: str) -> Path:
    """Draw the scaling curves (log-log) to a PNG; needs matplotlib.

    Args:
        scaling: the result of :func:`bench_scaling`.
        path: the PNG to write (parent folders are created).
        title: figure title (e.g. machine and date).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    curves = [*scaling["loss"], scaling["pairwise"]]
    for curve in curves:
        first = curve["points"][0]
        xs = [p["size"] / first["size"] for p in curve["points"]]
        label = f"{curve['term']} vs {curve['dim']} (exp {curve['exponent']['aam']:.2f})"
        left.plot(xs, [1e3 * p["aam_s"] for p in curve["points"]], "o-", label=label)
        left.plot(
            xs, [1e3 * p["baseline_mul_s"] for p in curve["points"]], "x:", color="grey", alpha=0.6
        )
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("size relative to the smallest point (×)")
    left.set_ylabel("forward + backward (ms)")
    left.set_title("MultiTaskLoss (grey: plain-torch baseline)")
    left.legend(fontsize=7)
    for curve in scaling["streaming"]:
        xs = [p["size"] for p in curve["points"]]
        label = f"{curve['family']} (exp {curve['exponent']['aam']:.2f})"
        right.plot(xs, [1e3 * p["aam_s"] for p in curve["points"]], "o-", label=label)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("elements streamed (N)")
    right.set_ylabel("update + compute (ms)")
    right.set_title("streaming metrics")
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
