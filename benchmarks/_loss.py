"""MultiTaskLoss forward + backward against plain-torch baselines on a realistic AAM batch.

Two baselines do the same math with the calls a user would otherwise write:

* ``baseline_mul``: multiplicative masks (``((p - t)**2 * m).sum() / m.sum()``,
  ``F.cross_entropy(reduction="none") * m``) and ``torch.cdist``; no host sync.
* ``baseline_select``: ``F.mse_loss`` / ``F.cross_entropy`` on the valid entries picked by
  boolean indexing (``x[mask]``, a host sync per term) and ``torch.cdist``.

Both are only correct because the benchmark batch holds *finite* values at padded positions;
with NaN/inf garbage there, the multiplicative baseline returns NaN (``nan * 0 = nan``) and
both return NaN gradients through ``cdist`` of a NaN row. ``MultiTaskLoss`` pays for not
having that failure mode; these numbers say how much.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from aam.training.losses import MultiTaskLoss
from benchmarks._timing import Timing, compare, synchronizer

__all__ = [
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "TERMS",
    "LossBatch",
    "LossSizes",
    "baseline_loss",
    "bench_loss",
    "make_loss_batch",
]

#: The loss terms, in the order ``MultiTaskLoss`` reports them.
TERMS = ("target_loss", "count_loss", "base_loss", "nuc_loss")

# term -> (output keys, target keys) that a forward with only that head needs.
_TERM_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "target_loss": (("target_prediction",), ("target",)),
    "count_loss": (("count_prediction",), ("counts", "mask")),
    "base_loss": (("embeddings",), ("base_target",)),
    "nuc_loss": (("nuc_predictions",), ("nucleotides", "nuc_mask")),
}


@dataclass(frozen=True)
class LossSizes:
    """Sizes of a benchmark batch.

    Attributes:
        batch: B, samples.
        asvs: A, ASVs per sample (padded).
        length: L, sequence positions per ASV (padded).
        vocab: V, nucleotide tokens.
        embed_dim: D, width of the sample embeddings behind the pairwise UniFrac term.
        padding: target fraction of padded ASVs per sample (sequence lengths add ~5% more
            padding at the nucleotide level).
    """

    batch: int = 16
    asvs: int = 512
    length: int = 150
    vocab: int = 6
    embed_dim: int = 128
    padding: float = 0.3

    def __post_init__(self) -> None:
        for name in ("batch", "asvs", "length", "vocab", "embed_dim"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"LossSizes.{name} must be >= 1, got {name}={value}")
        if not 0.0 <= self.padding < 1.0:
            raise ValueError(f"LossSizes.padding must be in [0, 1), got padding={self.padding}")

    def scaled(self, **factors: float) -> LossSizes:
        """A copy with some sizes multiplied, e.g. ``scaled(batch=2)`` (rounded, at least 1)."""
        return replace(
            self, **{name: max(1, round(getattr(self, name) * f)) for name, f in factors.items()}
        )


#: The realistic AAM batch of issue 5.
DEFAULT_SIZES = LossSizes()
#: Tiny sizes for ``--quick`` (smoke tests, a first look).
QUICK_SIZES = LossSizes(batch=4, asvs=16, length=12, vocab=6, embed_dim=16)


@dataclass
class LossBatch:
    """A benchmark batch: model outputs (leaf tensors that require grad) and targets.

    Attributes:
        outputs: ``target_prediction [B, 1]``, ``count_prediction [B, A, 1]``,
            ``embeddings [B, D]``, ``nuc_predictions [B, A, L, V]``.
        targets: ``target [B, 1]``, ``counts [B, A, 1]``, ``mask [B, A]`` (bool),
            ``base_target [B, B]`` (symmetric, zero diagonal), ``nucleotides [B, A, L]``
            (int64, valid ids everywhere), ``nuc_mask [B, A, L]`` (bool).
        sizes: the sizes it was built with.
    """

    outputs: dict[str, Tensor]
    targets: dict[str, Tensor]
    sizes: LossSizes

    def zero_grad(self) -> None:
        """Drop the outputs' gradients (as ``optimizer.zero_grad(set_to_none=True)`` does)."""
        for tensor in self.outputs.values():
            tensor.grad = None

    def padding_fractions(self) -> dict[str, float]:
        """Measured fraction of padded ASVs and of padded nucleotide positions."""
        return {
            "asv": 1.0 - float(self.targets["mask"].float().mean()),
            "nucleotide": 1.0 - float(self.targets["nuc_mask"].float().mean()),
        }

    def only(self, term: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(outputs, targets)`` restricted to one term's head (``term`` in :data:`TERMS`)."""
        output_keys, target_keys = _TERM_KEYS[term]
        return (
            {k: self.outputs[k] for k in output_keys},
            {k: self.targets[k] for k in target_keys},
        )


def make_loss_batch(
    sizes: LossSizes,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> LossBatch:
    """A ragged AAM batch with trailing padding and finite values everywhere.

    Each sample keeps a uniformly drawn number of ASVs around ``1 - padding`` of A (±15% of A);
    each ASV keeps a sequence length drawn uniformly from ``[0.9 L, L]``.

    Args:
        sizes: the batch sizes.
        device: where the tensors live.
        dtype: floating dtype of predictions and float targets.
        seed: seed of the generator (same seed, same batch).

    Returns:
        A :class:`LossBatch`.
    """
    gen = torch.Generator().manual_seed(seed)
    b, a, length, v, d = sizes.batch, sizes.asvs, sizes.length, sizes.vocab, sizes.embed_dim
    keep = 1.0 - sizes.padding
    low = max(0, round((keep - 0.15) * a))
    high = min(a, max(low, round((keep + 0.15) * a)))
    asv_counts = torch.randint(low, high + 1, (b,), generator=gen)
    mask = torch.arange(a) < asv_counts.unsqueeze(1)  # [B, A]
    lengths = torch.randint(max(1, round(0.9 * length)), length + 1, (b, a), generator=gen)
    nuc_mask = (torch.arange(length) < lengths.unsqueeze(-1)) & mask.unsqueeze(-1)  # [B, A, L]
    points = torch.randn(b, d, generator=gen, dtype=torch.float64)
    # True distances: a metric matrix (symmetric, zero diagonal) on the scale of the
    # embeddings' distances, so the base term is of ordinary size.
    base_target = torch.cdist(points, points)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    outputs = {
        "target_prediction": randn(b, 1),
        "count_prediction": randn(b, a, 1),
        "embeddings": randn(b, d),
        "nuc_predictions": randn(b, a, length, v),
    }
    targets = {
        "target": randn(b, 1),
        "counts": randn(b, a, 1),
        "mask": mask,
        "base_target": base_target.to(dtype),
        "nucleotides": torch.randint(0, v, (b, a, length), generator=gen),
        "nuc_mask": nuc_mask,
    }
    dev = torch.device(device)
    return LossBatch(
        outputs={k: t.to(dev).requires_grad_() for k, t in outputs.items()},
        targets={k: t.to(dev) for k, t in targets.items()},
        sizes=sizes,
    )


# ------------------------------------------------------------------------------ baselines


def _target_term(out: dict[str, Tensor], tgt: dict[str, Tensor], select: bool) -> Tensor:
    return F.mse_loss(out["target_prediction"], tgt["target"])


def _count_term(out: dict[str, Tensor], tgt: dict[str, Tensor], select: bool) -> Tensor:
    pred, true, mask = out["count_prediction"], tgt["counts"], tgt["mask"]
    if select:
        return F.mse_loss(pred[mask], true[mask])
    weight = mask.unsqueeze(-1).to(pred.dtype)
    return ((pred - true) ** 2 * weight).sum() / weight.sum()


def _base_term(out: dict[str, Tensor], tgt: dict[str, Tensor], select: bool) -> Tensor:
    emb, true = out["embeddings"], tgt["base_target"]
    dist = torch.cdist(emb, emb)
    size = emb.shape[0]
    off_diagonal = ~torch.eye(size, dtype=torch.bool, device=emb.device)
    if select:
        return F.mse_loss(dist[off_diagonal], true[off_diagonal])
    weight = off_diagonal.to(dist.dtype)
    return ((dist - true) ** 2 * weight).sum() / (size * (size - 1))


def _nuc_term(out: dict[str, Tensor], tgt: dict[str, Tensor], select: bool) -> Tensor:
    logits, ids, mask = out["nuc_predictions"], tgt["nucleotides"], tgt["nuc_mask"]
    if select:
        return F.cross_entropy(logits[mask], ids[mask])
    vocab = logits.shape[-1]
    nll = F.cross_entropy(logits.reshape(-1, vocab), ids.reshape(-1), reduction="none")
    weight = mask.reshape(-1).to(nll.dtype)
    return (nll * weight).sum() / weight.sum()


_BASELINE_TERMS: dict[str, Callable[[dict[str, Tensor], dict[str, Tensor], bool], Tensor]] = {
    "target_loss": _target_term,
    "count_loss": _count_term,
    "base_loss": _base_term,
    "nuc_loss": _nuc_term,
}


def baseline_loss(
    outputs: dict[str, Tensor],
    targets: dict[str, Tensor],
    *,
    select: bool = False,
    terms: tuple[str, ...] = TERMS,
) -> dict[str, Tensor]:
    """The same terms as ``MultiTaskLoss`` (penalties 1), written the textbook way.

    Args:
        outputs: as :attr:`LossBatch.outputs` (at least the heads of ``terms``).
        targets: as :attr:`LossBatch.targets`.
        select: boolean indexing of the valid entries (``x[mask]``) instead of
            multiplicative masks.
        terms: which terms to compute.

    Returns:
        term -> 0-dim tensor, plus ``total_loss`` (their sum).
    """
    losses = {term: _BASELINE_TERMS[term](outputs, targets, select) for term in terms}
    losses["total_loss"] = torch.stack(list(losses.values())).sum()
    return losses


# ------------------------------------------------------------------------------ benchmark


def loss_candidates(
    batch: LossBatch, loss_fn: MultiTaskLoss, term: str | None = None
) -> dict[str, Callable[[], None]]:
    """Zero-argument forward + backward callables: ``aam``, ``baseline_mul``, ``baseline_select``.

    Args:
        batch: the inputs (shared by every candidate).
        loss_fn: the ``MultiTaskLoss`` under test.
        term: one term (only its head is given to the loss), or ``None`` for the full loss.
    """
    terms: tuple[str, ...]
    if term is None:
        outputs, targets, terms = batch.outputs, batch.targets, TERMS
    else:
        (outputs, targets), terms = batch.only(term), (term,)

    def aam() -> None:
        batch.zero_grad()
        loss_fn(outputs, targets)["total_loss"].backward()

    def baseline(select: bool) -> Callable[[], None]:
        def run() -> None:
            batch.zero_grad()
            baseline_loss(outputs, targets, select=select, terms=terms)["total_loss"].backward()

        return run

    return {"aam": aam, "baseline_mul": baseline(False), "baseline_select": baseline(True)}


def _ratios(timings: dict[str, Timing]) -> dict[str, float]:
    aam = timings["aam"].median_s
    mul, sel = timings["baseline_mul"].median_s, timings["baseline_select"].median_s
    return {
        "vs_baseline_mul": aam / mul,
        "vs_baseline_select": aam / sel,
        "vs_fastest_baseline": aam / min(mul, sel),
    }


def _agreement(batch: LossBatch, loss_fn: MultiTaskLoss) -> dict[str, float]:
    """Largest relative difference between ``aam`` and the baseline, per term (sanity check)."""
    with torch.no_grad():
        ours = loss_fn(batch.outputs, batch.targets)
        theirs = baseline_loss(batch.outputs, batch.targets)
    return {
        term: abs(float(ours[term]) - float(theirs[term])) / max(abs(float(theirs[term])), 1e-30)
        for term in (*TERMS, "total_loss")
    }


def bench_loss(
    sizes: LossSizes,
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    per_term: bool = True,
) -> dict[str, Any]:
    """Time ``MultiTaskLoss`` forward + backward against both baselines on one batch.

    Args:
        sizes: the batch sizes.
        repeats: timed rounds (median reported).
        warmup: untimed rounds first.
        device: where to run.
        per_term: also time each term alone (its head only).

    Returns:
        JSON-ready dict: ``sizes``, ``padding``, ``seconds`` (per candidate), ``ratios``,
        ``rel_diff`` (aam vs baseline values, per term) and ``terms`` (per term: ``seconds``
        and ``ratios``) when ``per_term``.
    """
    batch = make_loss_batch(sizes, device=device)
    loss_fn = MultiTaskLoss().to(device)
    sync = synchronizer(device)
    timings = compare(loss_candidates(batch, loss_fn), repeats=repeats, warmup=warmup, sync=sync)
    result: dict[str, Any] = {
        "sizes": asdict(sizes),
        "padding": batch.padding_fractions(),
        "seconds": {name: t.to_plain() for name, t in timings.items()},
        "ratios": _ratios(timings),
        "rel_diff": _agreement(batch, loss_fn),
    }
    if per_term:
        terms: dict[str, Any] = {}
        for term in TERMS:
            term_timings = compare(
                loss_candidates(batch, loss_fn, term), repeats=repeats, warmup=warmup, sync=sync
            )
            terms[term] = {
                "seconds": {name: t.to_plain() for name, t in term_timings.items()},
                "ratios": _ratios(term_timings),
            }
        result["terms"] = terms
    return result
