"""C-GRAD-1: every term's gradient agrees with the float64 reference's gradient.

The values rules (C-REF-1) cannot see a backward that is wrong while its forward is right: a
hand-written ``torch.autograd.Function`` that forgets the ``1 / n`` of a mean, or the factor 2
of a square, passes every value check, and C-FINITE-2, C-MASK-2 and C-PURE-1 only ask for
gradients that are finite, unchanged by garbage and non-zero. This check runs ``forward`` and
``backward`` like the other loss checks (fresh leaf copies of the batch's outputs) and compares
each output's gradient, at its *valid* positions, with
:func:`robustness.references.reference_gradients`: autograd through the float64 torch
reference (the textbook formula on the boolean-selected valid entries, softmax from shifted
logits). Padded positions are C-MASK-2's (exact zeros); they are not compared here.

An entry is compared where the float64 reference gradient is finite and representable in the
output's dtype (``|ref| <= finfo.max / 4``, C-FINITE-2's condition), and only when the term's
reference value is representable at all. The tolerance is
:func:`robustness.tolerances.gradient_tolerance` with the per-output budget of
:func:`_gradient_budget`. A mean absolute error has no derivative where ``pred == true``;
any value in ``[-1, 1] * w / N`` is a subgradient there, so those entries are not judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from robustness.properties._losses import (
    _HEAD_OF,
    _PENALTY_OF,
    _Case,
    _check_batch,
    _check_term,
    _dtype_name,
    _num,
    _owed_dtype,
    _positions,
    _representable,
    _require_finite_valid,
    _run,
    _run_grads,
)
from robustness.references._losses import (
    HUBER_DELTA,
    reference_gradients,
    reference_losses,
    reference_pairwise_distances,
)
from robustness.strategies import MultiTaskBatch
from robustness.target import LossTarget
from robustness.tolerances import Tolerance, gradient_tolerance

__all__ = ["GRADIENT_CHECKS", "check_reference_gradients"]

_HEAD_OF_KEY = {
    "target_prediction": "target",
    "count_prediction": "count",
    "base_prediction": "base",
    "embeddings": "base",
    "nuc_predictions": "nuc",
}


def _gradient_budget(batch: MultiTaskBatch, key: str, weight: float) -> tuple[int, float]:
    """``(fan_in, scale)`` for :func:`gradient_tolerance` of ``outputs[key]``'s gradient.

    ``weight`` is the term's factor in what is differentiated (its penalty for the total, 1
    for the term itself). Per output (``N`` the number of entries the term averages):

    * squared errors (regression mse, count, base prediction), class-weighted or plain NLL of
      log-probabilities: one rounded difference or ratio times ``w / N``; nothing cancels
      (``scale = 0``); a weighted NLL normalises by the sum of ``B`` selected weights
      (``fan_in = B``);
    * mean absolute error: ``sign(p - t) w / N``, nothing cancels;
    * Huber: quadratic and linear parts meet at ``delta``; written as their sum they cancel
      at ``2 delta w / N`` (as C-PURE-1's floor says);
    * nucleotide logits: ``w / N (softmax - onehot)``, ``fan_in = V``, ``scale = w / N (1 +
      log V)`` (see :func:`gradient_tolerance`: independent of the logits' size and spread);
    * embeddings (unifrac through pairwise distances): an embedding row's gradient sums ``B``
      pairs, each ``4 w / P (d - t) (e_i - e_j) / d`` with ``P = B (B - 1)`` pairs, and a
      distance rounded relatively over ``E`` squares; so ``fan_in = B E`` and ``scale =
      4 w B / P (max |d| + max |d - t|)``.
    """
    head = _HEAD_OF_KEY[key]
    out, tg, kw = batch.outputs, batch.targets, batch.loss_kwargs
    if head == "target":
        pred = out[key]
        if batch.is_classifier:
            weighted = kw.get("class_weights") is not None
            return (max(int(pred.shape[0]), 1) if weighted else 1), 0.0
        if kw.get("target_loss_type", "mse") == "huber":
            return 1, 2.0 * HUBER_DELTA * weight / max(pred.numel(), 1)
        return 1, 0.0
    if head == "count" or key == "base_prediction":
        return 1, 0.0
    if head == "nuc":
        vocab = int(out[key].shape[-1])
        count = max(int((tg["nuc_mask"] != 0).sum()), 1)
        return vocab, weight / count * (1.0 + math.log(vocab))
    emb = out[key]
    size, width = int(emb.shape[0]), int(emb.shape[1])
    pairs = max(size * (size - 1), 1)
    dist = reference_pairwise_distances(emb)
    true = tg["base_target"].detach().cpu().double().numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        spread = float(np.max(np.abs(dist), initial=0.0)) + float(
            np.max(np.abs(dist - true), initial=0.0)
        )
    scale = 4.0 * weight * size / pairs * spread
    return max(size * width, 1), scale if math.isfinite(scale) else 1e300


def _judged(batch: MultiTaskBatch, key: str) -> Tensor:
    """Valid entries of ``outputs[key]`` whose gradient is defined (cpu bool tensor)."""
    judged = batch.valid(key).cpu()
    kw = batch.loss_kwargs
    if (
        key == "target_prediction"
        and not batch.is_classifier
        and kw.get("target_loss_type", "mse") == "mae"
    ):
        pred = batch.outputs[key].detach().cpu().double()
        true = batch.targets["target"].detach().cpu().double()
        judged &= pred != true  # |p - t| has no derivative at p == t
    return judged


def _weights(batch: MultiTaskBatch, term: str) -> dict[str, float]:
    """Output key -> the factor of its term in what is differentiated."""
    if term != "total_loss":
        return {batch.output_key(_HEAD_OF[term]): 1.0}
    return {
        batch.output_key(head): float(batch.loss_kwargs.get(_PENALTY_OF[head], 1.0))
        for head in batch.terms
    }


def _disagreement(grad: Tensor, ref: Tensor, judged: Tensor, tol: Tolerance) -> Tensor:
    """True where a judged entry is outside ``atol + rtol |ref|`` (non-finite included)."""
    g = grad.detach().cpu().double()
    close = (g - ref).abs() <= tol.atol + tol.rtol * ref.abs()
    return judged & ~(close & torch.isfinite(g))


def check_reference_gradients(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-GRAD-1: ``term``'s gradient for every output agrees with the float64 reference's.

    For each output feeding ``term`` (every output for ``total_loss``), the gradient at valid
    positions must be within :func:`~robustness.tolerances.gradient_tolerance` of
    :func:`~robustness.references.reference_gradients` (``|g - ref| <= atol + rtol |ref|``),
    wherever the reference gradient is finite and ``<= finfo(output dtype).max / 4``. A
    gradient that is ``None`` (the output not reached) counts as 0. Nothing is owed when the
    term's reference value is not representable (C-FINITE-1's condition).

    Raises:
        ContractViolation: if forward or backward raises, or a gradient entry disagrees,
            naming the output, the positions with both gradients, and the tolerance.
        HarnessUsageError: on an unknown term, a batch without the head, or non-finite inputs
            at valid positions.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    _require_finite_valid(batch, "check_reference_gradients")
    case = _Case("C-GRAD-1", term, check_reference_gradients, batch)
    ref_value = reference_losses(batch)[term]
    if not _representable(ref_value, _owed_dtype(batch)):
        return  # nothing is owed: the loss may overflow, return inf or raise
    run = batch.with_grad()
    value = _run(case, loss, run, "a batch with finite valid values")
    grads = _run_grads(case, value, run, "a batch with finite valid values")
    ref_grads = reference_gradients(batch, term)
    for key, weight in _weights(batch, term).items():
        out = batch.outputs[key]
        ref = ref_grads[key]
        limit = float(torch.finfo(out.dtype).max) / 4
        judged = _judged(batch, key) & torch.isfinite(ref) & (ref.abs() <= limit)
        if not bool(judged.any()):
            continue
        grad = grads.get(key)
        reached = grad is not None
        g = grad.detach().cpu() if grad is not None else torch.zeros(out.shape, dtype=out.dtype)
        fan_in, scale = _gradient_budget(batch, key, weight)
        tol = gradient_tolerance(batch.dtype, fan_in=fan_in, scale=scale)
        bad = _disagreement(g, ref, judged, tol)
        if bool(bad.any()):
            worst = float(((g.double() - ref).abs())[bad].max())
            ratio = _ratio(g.double()[judged], ref[judged])
            raise case.violation(
                f"gradient of {term} for outputs[{key!r}] disagrees with the float64 reference "
                "gradient at valid positions"
                + ("" if reached else f" (outputs[{key!r}] gets no gradient: None)"),
                {
                    "value": _num(value),
                    "bad gradient": _positions(bad, g, also=ref),
                    "greatest difference": f"{worst:.6g}",
                    "gradient / reference": ratio,
                    "tolerance": f"{tol.describe()} ({_dtype_name(batch.dtype)}, "
                    f"fan_in={fan_in}, scale={scale:.6g}); |g - ref| <= atol + rtol |ref|",
                },
            )


def _ratio(grad: Tensor, ref: Tensor) -> str:
    """The median of ``grad / ref`` over entries with a non-zero reference.

    A missing ``1/n`` or factor 2 shows as a round number.
    """
    nonzero = (ref != 0) & torch.isfinite(grad)
    if not bool(nonzero.any()):
        return "no non-zero reference entry"
    return f"median {float((grad[nonzero] / ref[nonzero]).median()):.6g} (1 when they agree)"


#: Rule id -> its check, like ``LOSS_CHECKS``.
GRADIENT_CHECKS: dict[str, Callable[..., None]] = {"C-GRAD-1": check_reference_gradients}
