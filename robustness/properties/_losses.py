"""One check per loss rule of the contract (every loss rule but C-WEIGHTS-1, in ``_weights``).

Every ``check_*`` takes the loss target (:class:`~robustness.target.LossTarget`), one drawn
:class:`~robustness.strategies.MultiTaskBatch` (already on the device to test) and plain keyword
parameters, the first of which is ``term``: ``"target_loss"``, ``"count_loss"``,
``"base_loss"``, ``"nuc_loss"`` or ``"total_loss"``. It returns ``None`` when the rule holds
and otherwise raises :class:`~robustness.errors.ContractViolation` carrying the rule id, the
term, the batch description (shapes, dtype, device, mask dtypes), the offending positions and
values, the tolerance used, and a :class:`~robustness.errors.ReplaySpec` that re-runs the same
check on the same batch.

The loss is always driven through ``forward`` (``loss_cls(**batch.loss_kwargs)(outputs,
targets, is_classifier=..., encoder_type=...)``), the call a training loop makes, on fresh leaf
copies of the batch's outputs that require grad. A check that cannot judge its input (a batch
without the term's head, a case that does not apply) raises
:class:`~robustness.errors.HarnessUsageError` instead: that is a bug of the caller, not of the
loss.

Values are compared with :func:`torch.testing.assert_close` under
:func:`robustness.tolerances.tolerance`; ``n`` is the number of terms the loss reduces and
``scale`` the magnitude of quantities that can cancel (see :func:`_budget`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustness.errors import ContractViolation, HarnessUsageError, ReplaySpec
from robustness.references._losses import (
    reference_gradients,
    reference_losses,
    reference_pairwise_distances,
)
from robustness.strategies import MultiTaskBatch
from robustness.target import LossTarget
from robustness.tolerances import Tolerance, mismatch, tolerance

__all__ = [
    "GARBAGE_FILLS",
    "LOSS_CHECKS",
    "LOSS_INPUT_CASES",
    "LOSS_SHAPE_CASES",
    "LOSS_TERMS",
    "check_device_agreement",
    "check_empty_terms",
    "check_finite_gradients",
    "check_finite_values",
    "check_half_precision",
    "check_invalid_inputs",
    "check_invariants",
    "check_mask_gradients",
    "check_mask_values",
    "check_nonfinite_detection",
    "check_padding_invariance",
    "check_pairwise_distances",
    "check_purity",
    "check_ragged_batches",
    "check_reference_values",
    "check_scalar_terms",
    "check_shape_mismatch",
    "check_zero_class_weights",
]

#: Loss term names, as ``MultiTaskLoss.forward`` returns them.
LOSS_TERMS = ("target_loss", "count_loss", "base_loss", "nuc_loss", "total_loss")
_HEAD_OF = {"target_loss": "target", "count_loss": "count", "base_loss": "base", "nuc_loss": "nuc"}
_PENALTY_OF = {
    "target": "target_penalty",
    "count": "count_penalty",
    "base": "penalty",
    "nuc": "nuc_penalty",
}
_HALF = (torch.float16, torch.bfloat16)

#: Garbage written to padded positions by C-MASK-1/2 and C-PURE-1: name -> value for a dtype.
GARBAGE_FILLS: dict[str, Callable[[torch.dtype], float]] = {
    "nan": lambda dtype: math.nan,
    "+inf": lambda dtype: math.inf,
    "-inf": lambda dtype: -math.inf,
    "finfo.max": lambda dtype: float(torch.finfo(dtype).max),
}

#: How many offending positions a violation lists.
_SHOW = 5


# --------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class _Case:
    """What a violation of one check on one batch needs: rule, term, replay arguments."""

    rule: str
    term: str
    check: Callable[..., None]
    batch: MultiTaskBatch
    args: Mapping[str, Any] = field(default_factory=dict)

    def violation(
        self, headline: str, details: Mapping[str, object] | None = None
    ) -> ContractViolation:
        info: dict[str, object] = {"input": self.batch.describe()}
        info.update(details or {})
        replay = ReplaySpec.of(self.check, "loss", batch=self.batch, term=self.term, **self.args)
        return ContractViolation(self.rule, self.term, headline, details=info, replay=replay)


def _check_term(term: object, allowed: Sequence[str] = LOSS_TERMS) -> str:
    if term not in allowed:
        raise HarnessUsageError(
            f"term must be one of {', '.join(map(repr, allowed))} for this check, got term={term!r}"
        )
    assert isinstance(term, str)
    return term


def _check_batch(batch: object, term: str) -> MultiTaskBatch:
    if not isinstance(batch, MultiTaskBatch):
        raise HarnessUsageError(
            "batch must be a MultiTaskBatch (from robustness.strategies.multitask_batches), "
            f"got {type(batch).__name__}"
        )
    if term in _HEAD_OF:
        batch.output_key(_HEAD_OF[term])  # raises HarnessUsageError naming the missing head
    return batch


def _term_keys(batch: MultiTaskBatch, term: str) -> list[str]:
    """Output keys that feed ``term`` (every output for the total)."""
    if term == "total_loss":
        return list(batch.outputs)
    return [batch.output_key(_HEAD_OF[term])]


def _forward(loss_fn: Any, batch: MultiTaskBatch) -> Any:
    return loss_fn(
        dict(batch.outputs),
        dict(batch.targets),
        is_classifier=batch.is_classifier,
        encoder_type=batch.encoder_type,
    )


def _exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _run(case: _Case, loss: LossTarget, batch: MultiTaskBatch, what: str) -> Tensor:
    """``forward`` on ``batch``; the ``case.term`` value, or a violation saying what happened."""
    try:
        result = _forward(loss.make(**batch.loss_kwargs), batch)
    except Exception as exc:  # any exception is the loss's, and the rule says it must not raise
        raise case.violation(
            f"raised on {what}",
            {"exception": _exc(exc)},
        ) from exc
    return _value(case, result)


def _value(case: _Case, result: object) -> Tensor:
    if not isinstance(result, Mapping) or case.term not in result:
        keys = sorted(result) if isinstance(result, Mapping) else type(result).__name__
        raise case.violation(f"forward did not return a {case.term!r} entry", {"returned": keys})
    value = result[case.term]
    if not isinstance(value, Tensor):
        raise case.violation(
            f"{case.term} is a {type(value).__name__}, not a tensor", {"value": repr(value)}
        )
    return value


def _grads(value: Tensor, batch: MultiTaskBatch) -> dict[str, Tensor | None]:
    """Gradient of ``value`` for every output leaf that requires grad (None where unreached)."""
    leaves = {k: v for k, v in batch.outputs.items() if v.requires_grad}
    if not value.requires_grad or not leaves:
        return dict.fromkeys(leaves)
    scalar = value if value.dim() == 0 else value.sum()
    grads = torch.autograd.grad(scalar, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, grads, strict=True))


def _run_grads(
    case: _Case, value: Tensor, batch: MultiTaskBatch, what: str
) -> dict[str, Tensor | None]:
    try:
        return _grads(value, batch)
    except Exception as exc:  # a backward that raises breaks training just the same
        raise case.violation(f"backward raised on {what}", {"exception": _exc(exc)}) from exc


def _num(value: Tensor) -> str:
    """A 0-dim (or small) tensor as text, with its dtype."""
    v = value.detach().cpu()
    shown = f"{float(v):.9g}" if v.numel() == 1 else str(v.double().tolist())
    return f"{shown} ({str(v.dtype).removeprefix('torch.')}, shape {tuple(v.shape)})"


def _positions(bad: Tensor, values: Tensor, *, also: Tensor | None = None) -> str:
    """``"3 position(s): (0, 2, 0) = nan [ref 1.5], ..."`` for the first few True in ``bad``."""
    bad = bad.detach().cpu()
    idx = torch.nonzero(bad)
    vals = values.detach().cpu().double()
    ref = also.detach().cpu().double() if also is not None else None
    parts = []
    for row in idx[:_SHOW].tolist():
        at = tuple(int(i) for i in row)
        text = f"{at} = {float(vals[at]):.9g}"
        if ref is not None:
            text += f" (expected {float(ref[at]):.9g})"
        parts.append(text)
    more = f", and {idx.shape[0] - _SHOW} more" if idx.shape[0] > _SHOW else ""
    return f"{idx.shape[0]} position(s): {'; '.join(parts)}{more}"


def _identical(a: Tensor, b: Tensor) -> bool:
    """Bit-for-bit equal values (NaN equals NaN at the same position), same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu(), b.detach().cpu()
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        return False
    return bool(torch.equal(torch.where(nan_a, 0, a), torch.where(nan_b, 0, b)))


def _owed_dtype(batch: MultiTaskBatch) -> torch.dtype:
    """The dtype a result must be representable in: the input's, float32 for half inputs."""
    return torch.float32 if batch.dtype in _HALF else batch.dtype


def _representable(ref: float, dtype: torch.dtype) -> bool:
    return math.isfinite(ref) and abs(ref) <= float(torch.finfo(dtype).max) / 4


def _require_finite_valid(batch: MultiTaskBatch, check: str) -> None:
    """The rules about finite inputs need finite values at valid positions (a harness input)."""
    for key, out in batch.outputs.items():
        if out.is_floating_point() and not bool(
            torch.isfinite(out.detach()[batch.valid(key)]).all()
        ):
            raise HarnessUsageError(
                f"{check} needs finite values at valid positions, but outputs[{key!r}] has "
                "non-finite ones; draw the batch with kind='ordinary' or 'extreme'"
            )
    for key, t in batch.targets.items():
        if key not in ("mask", "nuc_mask") and t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise HarnessUsageError(
                    f"{check} needs finite truths, but targets[{key!r}] has non-finite values"
                )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- tolerances


def _budget(batch: MultiTaskBatch, term: str) -> tuple[int, float]:
    """``(n, scale)`` for :func:`tolerance`: terms reduced, magnitude that can cancel.

    * squared/absolute errors and NLLs of log-probabilities are sums of non-negative terms,
      each a difference rounded once: a relative error, nothing cancels (``scale = 0``); Huber's
      linear branch subtracts ``delta / 2`` (``scale = 2 delta``);
    * the nucleotide cross-entropy ``logsumexp(x) - x[y]`` is shift-invariant: written as
      ``(max(x) - x[y]) + log sum exp(x - max(x))`` it rounds at the size of the logits'
      *spread* at a position, not their magnitude (``scale = max over valid positions of
      (max(x) - min(x)) + log V``, ``n`` = valid positions times ``V``): equal logits of
      1e7 owe ``log V`` to float32 rounding. A scale of ``max|x|`` would accept the
      ``1.0`` that ``lse - x[y]`` of two huge, nearly equal numbers gives for ``log 2``;
    * the base term over pairwise distances of embeddings inherits the distances' rounding
      ``~eps |d|`` times ``2 |d - t|`` (``scale = 2 max|d| max|d - t|``, ``n`` = pairs times
      ``E``);
    * the total adds the penalty-weighted budgets of its terms.
    """
    if term == "total_loss":
        n_total, scale_total = 0, 0.0
        for head in batch.terms:
            n, scale = _budget(batch, f"{head}_loss")
            weight = float(batch.loss_kwargs.get(_PENALTY_OF[head], 1.0))
            n_total += n
            scale_total += weight * scale
        return max(n_total, 1), _finite_scale(scale_total)
    head = _HEAD_OF[term]
    out, tg = batch.outputs, batch.targets
    if head == "target":
        pred = out["target_prediction"]
        if batch.is_classifier:
            return max(int(pred.shape[0]), 1), 0.0
        huber = batch.loss_kwargs.get("target_loss_type", "mse") == "huber"
        return max(pred.numel(), 1), 2.0 if huber else 0.0
    if head == "count":
        return max(int((tg["mask"] != 0).sum()), 1), 0.0
    if head == "nuc":
        logits = out["nuc_predictions"].detach().cpu().double()
        valid = (tg["nuc_mask"] != 0).cpu()
        vocab = int(logits.shape[-1])
        rows = logits[valid]  # [n, V]
        spread = float((rows.amax(dim=-1) - rows.amin(dim=-1)).max()) if rows.numel() else 0.0
        return max(int(valid.sum()) * vocab, 1), _finite_scale(spread + math.log(vocab))
    size = int(tg["base_target"].shape[0])
    pairs = max(size * (size - 1), 1) if batch.encoder_type == "unifrac" else max(size, 1)
    if not batch.uses_embeddings:
        return pairs, 0.0
    emb = out["embeddings"]
    dist = reference_pairwise_distances(emb)
    true = tg["base_target"].detach().cpu().double().numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        scale = 2.0 * float(np.max(np.abs(dist))) * float(np.max(np.abs(dist - true)))
    return pairs * int(emb.shape[1]), _finite_scale(scale)


def _finite_scale(scale: float) -> float:
    # An unrepresentable scale only occurs where the reference itself is unrepresentable and
    # no comparison is made; keep tolerance() happy.
    return scale if math.isfinite(scale) else 1e300


def _tolerance_text(tol: Tolerance, dtype: torch.dtype, n: int, scale: float) -> str:
    return f"{tol.describe()} ({_dtype_name(dtype)}, n={n}, scale={scale:.6g})"


def _compare(actual: Tensor, expected: Tensor, tol: Tolerance) -> str | None:
    """``None`` when close, else :func:`torch.testing.assert_close`'s message.

    NaN is never close to anything, a NaN expected value included; rather than torch's
    ``Expected nan but got nan.``, the message then says that both are NaN.
    """
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if a.shape == e.shape:
        both = torch.isnan(a) & torch.isnan(e)
        if bool(both.any()):
            where = "" if a.dim() == 0 else f" at {int(both.sum())} of {a.numel()} position(s)"
            return (
                f"both results are NaN{where}: NaN is owed by no rule, so the fault is the NaN "
                "itself, not a difference between them"
            )
    return mismatch(a, e, tol)


# --------------------------------------------------------------------------- batch surgery


def _replace(batch: MultiTaskBatch, **changes: Any) -> MultiTaskBatch:
    return dataclasses.replace(batch, **changes)


def _take_rows(batch: MultiTaskBatch, rows: Sequence[int]) -> MultiTaskBatch:
    """The batch of samples ``rows`` (in that order); pairwise tensors lose rows and columns."""
    index = torch.tensor(list(rows), dtype=torch.long, device=batch.device)
    pairwise = batch.encoder_type == "unifrac"

    def take(key: str, t: Tensor) -> Tensor:
        picked = t.detach().index_select(0, index)
        if pairwise and key in ("base_prediction", "base_target"):
            picked = picked.index_select(1, index)
        return picked.clone()

    return _replace(
        batch,
        outputs={k: take(k, v) for k, v in batch.outputs.items()},
        targets={k: take(k, v) for k, v in batch.targets.items()},
        padded={k: take(k, v) for k, v in batch.padded.items()},
    )


def _grow(t: Tensor, shape: Sequence[int], fill: float | bool) -> Tensor:
    """``t`` at the leading corner of a ``shape`` tensor filled with ``fill``."""
    big = torch.full(tuple(shape), fill, dtype=t.dtype, device=t.device)
    big[tuple(slice(0, n) for n in t.shape)] = t.detach()
    return big


def _append(t: Tensor, dim: int, fill: float | bool = 0) -> Tensor:
    """``t`` with one more entry along ``dim`` (a new dimension when ``dim == t.dim()``)."""
    t = t.detach()
    if dim == t.dim():
        return t.unsqueeze(dim)
    shape = list(t.shape)
    shape[dim] = 1
    extra = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    return torch.cat([t, extra], dim=dim)


def _padding_contents(batch: MultiTaskBatch) -> str:
    """What the padded positions hold, per output: ``"outputs['x']: 4 padded, all nan"``."""
    parts = []
    for key, pad in batch.padded.items():
        values = batch.outputs[key].detach().cpu().double()[pad.cpu()]
        if values.numel() == 0:
            continue
        kinds = {
            "nan": int(torch.isnan(values).sum()),
            "+inf": int((values == math.inf).sum()),
            "-inf": int((values == -math.inf).sum()),
        }
        kinds["finite"] = values.numel() - sum(kinds.values())
        held = [f"{n} {k}" for k, n in kinds.items() if n]
        text = f"all {held[0].split(' ', 1)[1]}" if len(held) == 1 else ", ".join(held)
        parts.append(f"outputs[{key!r}]: {values.numel()} padded, {text}")
    return "; ".join(parts) or "nothing is padded"


def _as_drawn(batch: MultiTaskBatch) -> str:
    """``"the batch as drawn (padded positions: ...)"``: garbage may already be there."""
    return f"the batch as drawn (padded positions: {_padding_contents(batch)})"


def _describe_garbage(batch: MultiTaskBatch, name: str) -> str:
    counts = [f"{int(p.sum())} of outputs[{k!r}]" for k, p in batch.padded.items() if bool(p.any())]
    return f"{name} at padded positions: {', '.join(counts) or 'none (nothing is padded)'}"


# --------------------------------------------------------------------------- C-SCALAR-1


def check_scalar_terms(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-SCALAR-1: ``term`` is a 0-dim floating tensor, whatever the batch size.

    Raises:
        ContractViolation: if forward raises, lacks the term, or it is not a 0-dim float.
        HarnessUsageError: on an unknown term or a batch without the term's head.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    case = _Case("C-SCALAR-1", term, check_scalar_terms, batch)
    value = _run(case, loss, batch.with_grad(), "a batch with finite valid values")
    problems = []
    if value.dim() != 0:
        problems.append(f"shape {tuple(value.shape)} instead of () (0-dim)")
    if not value.is_floating_point():
        problems.append(f"dtype {value.dtype} instead of a floating dtype")
    if problems:
        raise case.violation(
            f"{term} is not a 0-dim floating tensor: {'; '.join(problems)}",
            {"value": _num(value), "batch size": batch.batch_size},
        )


# --------------------------------------------------------------------------- C-FINITE-1/2


def check_finite_values(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-FINITE-1: finite values at valid positions give a finite ``term``.

    A finite result is owed only when the float64 reference value is representable in the
    result dtype: ``|ref| <= finfo.max / 4`` of the input dtype, or of float32 for
    float16/bfloat16 inputs (which C-DTYPE-1 says are computed and returned in float32 or
    wider). A loss of ``1e40`` from float32 inputs may overflow (or raise); one of ``1e30``
    may not, however large its intermediates.

    Raises:
        ContractViolation: if forward raises or the term is non-finite though it is owed.
        HarnessUsageError: on an unknown term, a batch without the head, or non-finite inputs
            at valid positions.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    _require_finite_valid(batch, "check_finite_values")
    case = _Case("C-FINITE-1", term, check_finite_values, batch)
    ref = reference_losses(batch)[term]
    owed = _owed_dtype(batch)
    if not _representable(ref, owed):
        return  # nothing is owed: the loss may overflow, return inf or raise
    value = _run(case, loss, batch.with_grad(), "a batch with finite valid values")
    if not bool(torch.isfinite(value.detach()).all()):
        raise case.violation(
            f"{term} is not finite although every valid input is finite and the float64 "
            f"reference is representable in {_dtype_name(owed)}",
            {
                "value": _num(value),
                "reference": f"{ref:.9g} (float64)",
                "owed when": f"|reference| <= finfo({_dtype_name(owed)}).max / 4 = "
                f"{float(torch.finfo(owed).max) / 4:.6g}",
            },
        )


def check_finite_gradients(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-FINITE-2: finite valid inputs give finite gradients of ``term`` for every output.

    Owed where the reference is representable: the float64 reference value as in
    :func:`check_finite_values`, and, position by position, the float64 reference gradient in
    the dtype of the output it belongs to (``|ref grad| <= finfo(output dtype).max / 4``; a
    float16 output cannot hold a gradient of 1e5). Padded positions (reference gradient 0)
    are always owed a finite gradient.

    Raises:
        ContractViolation: if forward or backward raises, or a gradient entry that is owed
            is NaN or infinite.
        HarnessUsageError: on an unknown term, a batch without the head, or non-finite inputs.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    _require_finite_valid(batch, "check_finite_gradients")
    case = _Case("C-FINITE-2", term, check_finite_gradients, batch)
    ref = reference_losses(batch)[term]
    if not _representable(ref, _owed_dtype(batch)):
        return  # nothing is owed: the loss may overflow, return inf or raise
    run = batch.with_grad()
    value = _run(case, loss, run, "a batch with finite valid values")
    grads = _run_grads(case, value, run, "a batch with finite valid values")
    ref_grads = reference_gradients(batch, term)
    for key, grad in grads.items():
        if grad is None:
            continue
        limit = float(torch.finfo(batch.outputs[key].dtype).max) / 4
        g = grad.detach().cpu()
        rg = ref_grads.get(key, torch.zeros(g.shape, dtype=torch.float64))
        owed = torch.isfinite(rg) & (rg.abs() <= limit)
        bad = owed & ~torch.isfinite(g)
        if bool(bad.any()):
            raise case.violation(
                f"gradient of {term} for outputs[{key!r}] is not finite where the float64 "
                "reference gradient is representable",
                {
                    "value": _num(value),
                    "bad gradient": _positions(bad, g, also=rg),
                    "owed when": f"|reference gradient| <= finfo({_dtype_name(g.dtype)}).max "
                    f"/ 4 = {limit:.6g}",
                },
            )


# --------------------------------------------------------------------------- C-MASK-1/2


def _fills(batch: MultiTaskBatch) -> list[tuple[str, float]]:
    return [(name, make(batch.dtype)) for name, make in GARBAGE_FILLS.items()]


def check_mask_values(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-MASK-1: garbage at padded positions never changes ``term`` (bit-identical).

    The batch is evaluated as drawn and again with every padded position of every output set
    to NaN, +inf, -inf and ``finfo.max`` in turn; each value must be bit-identical
    (:func:`torch.equal`) to the clean one.

    Raises:
        ContractViolation: if forward raises on either batch or the value changes.
        HarnessUsageError: on an unknown term or a batch without the head.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    case = _Case("C-MASK-1", term, check_mask_values, batch)
    clean = _run(case, loss, batch.with_grad(), _as_drawn(batch))
    for name, fill in _fills(batch):
        dirty_batch = batch.with_grad().with_garbage(fill)
        garbage = _describe_garbage(batch, name)
        dirty = _run(case, loss, dirty_batch, f"a batch with {garbage}")
        if not _identical(clean, dirty):
            raise case.violation(
                f"{term} changed when padded positions held {name}",
                {
                    "garbage": garbage,
                    "clean value": _num(clean),
                    "with garbage": _num(dirty),
                    "tolerance": "none: bit-identical (torch.equal) required",
                },
            )


def check_mask_gradients(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-MASK-2: gradients at padded positions are exactly 0 and finite, whatever they hold.

    For each garbage fill (NaN, +inf, -inf, ``finfo.max``) at every padded position, the
    gradient of ``term`` must be exactly 0 at every padded position of every output, and
    bit-identical to the clean run's gradient at every valid position. An output the term
    does not reach (gradient ``None``) counts as zero.

    Raises:
        ContractViolation: if forward/backward raises, a padded gradient is not exactly 0, or
            a valid gradient changes.
        HarnessUsageError: on an unknown term or a batch without the head.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    case = _Case("C-MASK-2", term, check_mask_gradients, batch)
    clean_batch = batch.with_grad()
    clean_value = _run(case, loss, clean_batch, _as_drawn(batch))
    clean = _run_grads(case, clean_value, clean_batch, _as_drawn(batch))
    for name, fill in _fills(batch):
        dirty_batch = batch.with_grad().with_garbage(fill)
        garbage = _describe_garbage(batch, name)
        value = _run(case, loss, dirty_batch, f"a batch with {garbage}")
        dirty = _run_grads(case, value, dirty_batch, f"a batch with {garbage}")
        for key, grad in dirty.items():
            out = dirty_batch.outputs[key]
            g = (grad if grad is not None else torch.zeros_like(out)).detach().cpu()
            c = clean.get(key)
            c = (c if c is not None else torch.zeros_like(out)).detach().cpu()
            padded = batch.padded[key].cpu()
            bad = padded & ((g != 0) | ~torch.isfinite(g))
            if bool(bad.any()):
                raise case.violation(
                    f"gradient of {term} at padded positions of outputs[{key!r}] is not "
                    f"exactly 0 when they hold {name}",
                    {
                        "garbage": garbage,
                        "bad gradient": _positions(bad, g),
                        "tolerance": "none: exactly 0 required",
                    },
                )
            valid = ~padded
            if not _identical(g[valid], c[valid]):
                changed = valid & ~((g == c) | (torch.isnan(g) & torch.isnan(c)))
                raise case.violation(
                    f"gradient of {term} at valid positions of outputs[{key!r}] changed when "
                    f"padded positions held {name}",
                    {
                        "garbage": garbage,
                        "changed gradient": _positions(changed, g, also=c),
                        "tolerance": "none: bit-identical to the clean run required",
                    },
                )


# --------------------------------------------------------------------------- C-PAD-1


def _widen(batch: MultiTaskBatch, asvs: int, length: int, rows: int) -> MultiTaskBatch:
    """The batch in a wider rectangle; the new positions are padding with finite values.

    ``asvs`` more ASVs, ``length`` more positions, and ``rows`` more all-padding samples, the
    latter only when every head is masked (rows are samples for the target and base heads).
    """
    rows = rows if set(batch.terms) <= {"count", "nuc"} else 0
    out, tg, pad = dict(batch.outputs), dict(batch.targets), dict(batch.padded)
    if "count_prediction" in out:
        b, a, _ = out["count_prediction"].shape
        shape = (b + rows, a + asvs, 1)
        out["count_prediction"] = _grow(out["count_prediction"], shape, 1.5)
        tg["counts"] = _grow(tg["counts"], shape, -2.5)
        tg["mask"] = _grow(tg["mask"], shape[:-1], 0)
        pad["count_prediction"] = _grow(pad["count_prediction"], shape, True)
    if "nuc_predictions" in out:
        b, a, n, v = out["nuc_predictions"].shape
        shape4 = (b + rows, a + asvs, n + length, v)
        out["nuc_predictions"] = _grow(out["nuc_predictions"], shape4, 0.75)
        tg["nucleotides"] = _grow(tg["nucleotides"], shape4[:-1], -100)
        tg["nuc_mask"] = _grow(tg["nuc_mask"], shape4[:-1], 0)
        pad["nuc_predictions"] = _grow(pad["nuc_predictions"], shape4, True)
    return _replace(batch, outputs=out, targets=tg, padded=pad)


def check_padding_invariance(
    loss: LossTarget,
    batch: MultiTaskBatch,
    *,
    term: str,
    extra_asvs: int = 2,
    extra_len: int = 2,
    extra_rows: int = 1,
) -> None:
    """C-PAD-1: more padding (wider A or L, extra all-padding rows) never changes ``term``.

    The batch is embedded in a wider rectangle (``extra_asvs`` ASVs, ``extra_len`` sequence
    positions, and, when every head is masked, ``extra_rows`` all-padding samples) whose new
    positions are padding. The value must agree with the original within the result dtype's
    tolerance for a reduction over the wider tensor. Bit-identity is *not* required: the same
    valid terms summed inside a larger tensor may be associated differently (vectorized and
    pairwise reductions split by size), which moves the last bits; C-MASK-1 already demands
    bit-identity when only the padded *values* change.

    Raises:
        ContractViolation: if forward raises on the wider batch or the value moves beyond
            tolerance.
        HarnessUsageError: on an unknown term, a batch without the head, or negative sizes.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    for name, n in (
        ("extra_asvs", extra_asvs),
        ("extra_len", extra_len),
        ("extra_rows", extra_rows),
    ):
        if not isinstance(n, int) or n < 0:
            raise HarnessUsageError(f"{name} must be an int >= 0, got {name}={n!r}")
    case = _Case(
        "C-PAD-1",
        term,
        check_padding_invariance,
        batch,
        {"extra_asvs": extra_asvs, "extra_len": extra_len, "extra_rows": extra_rows},
    )
    narrow = _run(case, loss, batch.with_grad(), _as_drawn(batch))
    wide_batch = _widen(batch, extra_asvs, extra_len, extra_rows)
    wide = _run(case, loss, wide_batch.with_grad(), "the batch with extra padding")
    n = max((t.numel() for t in wide_batch.outputs.values()), default=1)
    tol = tolerance(narrow.dtype if narrow.is_floating_point() else batch.dtype, n=max(n, 1))
    message = _compare(wide, narrow, tol)
    if message is not None:
        shapes = ", ".join(
            f"{k} {tuple(batch.outputs[k].shape)} -> {tuple(v.shape)}"
            for k, v in wide_batch.outputs.items()
            if v.shape != batch.outputs[k].shape
        )
        raise case.violation(
            f"{term} changed when the batch was padded to a wider rectangle",
            {
                "padding": shapes or "none (no masked head)",
                "original": _num(narrow),
                "wider": _num(wide),
                "tolerance": _tolerance_text(tol, narrow.dtype, n, 0.0),
                "comparison": message,
            },
        )


# --------------------------------------------------------------------------- C-EMPTY-1


def _emptied(batch: MultiTaskBatch, term: str) -> tuple[MultiTaskBatch, list[str]]:
    """The batch with ``term`` (every emptiable term for the total) having no valid entry."""
    heads = [_HEAD_OF[term]] if term != "total_loss" else list(batch.terms)
    emptied: list[str] = []
    if "base" in heads and batch.encoder_type == "unifrac":
        batch = _take_rows(batch, [0])  # B = 1: no off-diagonal pair
        emptied.append("base")
    elif term == "base_loss":
        raise HarnessUsageError(
            "check_empty_terms: a faith_pd base term always has B >= 1 entries; use a unifrac "
            "batch (B = 1 leaves no off-diagonal pair)"
        )
    if term == "target_loss":
        raise HarnessUsageError(
            "check_empty_terms: target_loss has no padding (every sample is valid); "
            "C-WEIGHT-1 covers zero selected class weights"
        )
    tg, pad = dict(batch.targets), dict(batch.padded)
    if "count" in heads:
        tg["mask"] = torch.zeros_like(tg["mask"])
        pad["count_prediction"] = torch.ones_like(pad["count_prediction"])
        emptied.append("count")
    if "nuc" in heads:
        tg["nuc_mask"] = torch.zeros_like(tg["nuc_mask"])
        pad["nuc_predictions"] = torch.ones_like(pad["nuc_predictions"])
        emptied.append("nuc")
    return _replace(batch, targets=tg, padded=pad), emptied


def check_empty_terms(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-EMPTY-1: a term with zero valid positions is exactly 0 and still in the graph.

    The batch is emptied for ``term``: all-padding ``mask`` (count), all-padding ``nuc_mask``
    (nuc), ``B = 1`` (unifrac base: no off-diagonal pair); for ``total_loss`` every one of
    those at once. Each emptied term must be exactly 0, and ``total_loss``'s gradient must
    reach every prediction (``grad is not None``), be finite everywhere, and be exactly 0 on the
    outputs of emptied terms.

    Raises:
        ContractViolation: if forward/backward raises, an emptied term is not exactly 0, or a
            gradient is missing, non-finite or non-zero where it must be 0.
        HarnessUsageError: for target_loss or a faith_pd base term (nothing to empty).
    """
    term = _check_term(term, ("count_loss", "base_loss", "nuc_loss", "total_loss"))
    batch = _check_batch(batch, term)
    empty, heads = _emptied(batch, term)
    case = _Case("C-EMPTY-1", term, check_empty_terms, batch)
    run = empty.with_grad()
    what = f"a batch where {', '.join(h + '_loss' for h in heads)} has no valid entry"
    try:
        result = _forward(loss.make(**run.loss_kwargs), run)
    except Exception as exc:
        raise case.violation(f"raised on {what}", {"exception": _exc(exc)}) from exc
    details: dict[str, object] = {"emptied": what, "emptied input": empty.describe()}
    for head in heads:
        sub = _value(dataclasses.replace(case, term=f"{head}_loss"), result)
        if not (bool(torch.isfinite(sub.detach()).all()) and bool((sub.detach() == 0).all())):
            raise case.violation(
                f"{head}_loss with no valid entry is not exactly 0",
                {**details, "value": _num(sub), "tolerance": "none: exactly 0 required"},
            )
    total = _value(dataclasses.replace(case, term="total_loss"), result)
    grads = _run_grads(case, total, run, what)
    zero_keys = {run.output_key(h) for h in heads}
    # A per-term row judges the emptied term's own outputs; the others are their rows' business.
    judged = set(grads) if term == "total_loss" else zero_keys
    for key, grad in grads.items():
        if key not in judged:
            continue
        if grad is None:
            raise case.violation(
                f"total_loss.backward() does not reach outputs[{key!r}] (grad is None): the "
                "empty term was detached from the prediction",
                {**details, "total": _num(total)},
            )
        g = grad.detach().cpu()
        bad = ~torch.isfinite(g)
        if key in zero_keys:
            bad |= g != 0
        if bool(bad.any()):
            need = "exactly 0" if key in zero_keys else "finite"
            raise case.violation(
                f"gradient of total_loss for outputs[{key!r}] is not {need}",
                {**details, "bad gradient": _positions(bad, g)},
            )


# --------------------------------------------------------------------------- C-RAGGED-1


def check_ragged_batches(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-RAGGED-1: every batch size works, remainder batches and ``B = 1`` included.

    One loss instance sees the batch, then its first ``B-1``, ..., 1 samples (the remainder
    batches after a full one, so state kept from the first call is exercised). Each call must
    return a finite 0-dim value that agrees with the float64 reference within tolerance (where
    that reference is representable), and the unifrac base term must be exactly 0 at ``B = 1``.

    Raises:
        ContractViolation: if a call raises, or a value is wrong for some batch size.
        HarnessUsageError: on an unknown term or a batch without the head.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    case = _Case("C-RAGGED-1", term, check_ragged_batches, batch)
    loss_fn = loss.make(**batch.loss_kwargs)
    for size in range(batch.batch_size, 0, -1):
        sub = _take_rows(batch, range(size)) if size < batch.batch_size else batch
        run = sub.with_grad()
        what = f"a batch of B={size} after B={batch.batch_size}"
        try:
            result = _forward(loss_fn, run)
        except Exception as exc:
            raise case.violation(f"raised on {what}", {"exception": _exc(exc)}) from exc
        value = _value(case, result)
        ref = reference_losses(sub)[term]
        info = {"batch size": f"{size} (of {batch.batch_size})", "value": _num(value)}
        if value.dim() != 0:
            raise case.violation(f"{term} is not 0-dim on {what}", info)
        if size == 1 and term == "base_loss" and batch.encoder_type == "unifrac":
            if not bool(value.detach() == 0):
                raise case.violation(
                    "unifrac base_loss at B=1 (no off-diagonal pair) is not exactly 0", info
                )
        if not _representable(ref, _owed_dtype(sub)):
            continue
        n, scale = _budget(sub, term)
        tol = tolerance(sub.dtype, n=n, scale=scale)
        message = _compare(value, torch.tensor(ref, dtype=torch.float64), tol)
        if message is not None:
            raise case.violation(
                f"{term} is wrong on {what}",
                {
                    **info,
                    "reference": f"{ref:.9g} (float64)",
                    "tolerance": _tolerance_text(tol, sub.dtype, n, scale),
                    "comparison": message,
                },
            )


# --------------------------------------------------------------------------- C-SHAPE-1


@dataclass(frozen=True)
class _ShapeCase:
    term: str
    options: dict[str, Any]
    build: Callable[[MultiTaskBatch], tuple[MultiTaskBatch, str, str]]
    description: str


def _set(
    batch: MultiTaskBatch,
    *,
    outputs: Mapping[str, Tensor] | None = None,
    targets: Mapping[str, Tensor] | None = None,
) -> MultiTaskBatch:
    out, tg, pad = dict(batch.outputs), dict(batch.targets), dict(batch.padded)
    for key, value in (outputs or {}).items():
        out[key] = value
        pad[key] = torch.zeros(value.shape, dtype=torch.bool, device=value.device)
    tg.update(targets or {})
    return _replace(batch, outputs=out, targets=tg, padded=pad)


def _shape_target_columns(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return (
        _set(b, targets={"target": _append(b.targets["target"], 1)}),
        "target",
        "target_prediction",
    )


def _shape_target_vector(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    pred = b.outputs["target_prediction"].detach()[:, :1].clone()
    true = b.targets["target"][:, 0].clone()
    return (
        _set(b, outputs={"target_prediction": pred}, targets={"target": true}),
        "target",
        "target_prediction",
    )


def _shape_target_rows(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    # One more row of targets than predictions: regression [B+1, D] or class ids [B+1].
    return (
        _set(b, targets={"target": _append(b.targets["target"], 0)}),
        "target",
        "target_prediction",
    )


def _shape_class_column(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return (
        _set(b, targets={"target": b.targets["target"].unsqueeze(1)}),
        "target",
        "target_prediction",
    )


def _shape_mask_asvs(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return _set(b, targets={"mask": _append(b.targets["mask"], 1, 1)}), "mask", "count_prediction"


def _shape_mask_rows(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return _set(b, targets={"mask": _append(b.targets["mask"], 0, 1)}), "mask", "count_prediction"


def _shape_counts_asvs(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return (
        _set(b, targets={"counts": _append(b.targets["counts"], 1)}),
        "counts",
        "count_prediction",
    )


def _shape_counts_squeezed(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return (
        _set(b, targets={"counts": b.targets["counts"][..., 0].clone()}),
        "counts",
        "count_prediction",
    )


def _shape_base_columns(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    pred = _append(b.outputs["base_prediction"], 1)
    return _set(b, outputs={"base_prediction": pred}), "base_prediction", "base_target"


def _shape_base_target_rows(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    true = _append(_append(b.targets["base_target"], 0), 1)
    return _set(b, targets={"base_target": true}), "base_target", b.output_key("base")


def _shape_base_faith_vector(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    pred = b.outputs["base_prediction"].detach()[:, 0].clone()
    return _set(b, outputs={"base_prediction": pred}), "base_prediction", "base_target"


def _shape_nuc_mask_length(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return (
        _set(b, targets={"nuc_mask": _append(b.targets["nuc_mask"], 2, 1)}),
        "nuc_mask",
        "nuc_predictions",
    )


def _shape_nuc_mask_asvs(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    return (
        _set(b, targets={"nuc_mask": _append(b.targets["nuc_mask"], 1, 1)}),
        "nuc_mask",
        "nuc_predictions",
    )


def _shape_nucleotides_length(b: MultiTaskBatch) -> tuple[MultiTaskBatch, str, str]:
    ids = _append(b.targets["nucleotides"], 2, 0)
    return _set(b, targets={"nucleotides": ids}), "nucleotides", "nuc_predictions"


_REG = {"terms": ("target",), "classifier": False}
_CLS = {"terms": ("target",), "classifier": True}
_UNI = {"terms": ("base",), "encoder_type": "unifrac", "embeddings": False}

#: C-SHAPE-1 cases: name -> (term, ``multitask_batches`` options, what is mismatched).
LOSS_SHAPE_CASES: dict[str, _ShapeCase] = {
    "target_columns": _ShapeCase(
        "target_loss", _REG, _shape_target_columns, "regression target [B, D+1] vs [B, D]"
    ),
    "target_column_vs_vector": _ShapeCase(
        "target_loss", _REG, _shape_target_vector, "regression prediction [B, 1] vs target [B]"
    ),
    "target_remainder_rows": _ShapeCase(
        "target_loss", _REG, _shape_target_rows, "regression target [B+1, D] vs [B, D]"
    ),
    "class_ids_column": _ShapeCase(
        "target_loss", _CLS, _shape_class_column, "class ids [B, 1] vs log-probs [B, K]"
    ),
    "class_ids_rows": _ShapeCase(
        "target_loss", _CLS, _shape_target_rows, "class ids [B+1] vs log-probs [B, K]"
    ),
    "count_mask_asvs": _ShapeCase(
        "count_loss", {"terms": ("count",)}, _shape_mask_asvs, "mask [B, A+1] vs [B, A, 1]"
    ),
    "count_mask_rows": _ShapeCase(
        "count_loss", {"terms": ("count",)}, _shape_mask_rows, "mask [B+1, A] vs [B, A, 1]"
    ),
    "counts_asvs": _ShapeCase(
        "count_loss", {"terms": ("count",)}, _shape_counts_asvs, "counts [B, A+1, 1] vs [B, A, 1]"
    ),
    "counts_squeezed": _ShapeCase(
        "count_loss", {"terms": ("count",)}, _shape_counts_squeezed, "counts [B, A] vs [B, A, 1]"
    ),
    "base_columns": _ShapeCase(
        "base_loss", _UNI, _shape_base_columns, "unifrac prediction [B, B+1] vs target [B, B]"
    ),
    "base_target_remainder": _ShapeCase(
        "base_loss",
        {"terms": ("base",), "encoder_type": "unifrac"},
        _shape_base_target_rows,
        "unifrac target [B+1, B+1] of a full batch vs prediction [B, B] of a remainder batch",
    ),
    "base_faith_vector": _ShapeCase(
        "base_loss",
        {"terms": ("base",), "encoder_type": "faith_pd"},
        _shape_base_faith_vector,
        "faith_pd prediction [B] vs target [B, 1]",
    ),
    "nuc_mask_length": _ShapeCase(
        "nuc_loss", {"terms": ("nuc",)}, _shape_nuc_mask_length, "nuc_mask [B, A, L+1]"
    ),
    "nuc_mask_asvs": _ShapeCase(
        "nuc_loss", {"terms": ("nuc",)}, _shape_nuc_mask_asvs, "nuc_mask [B, A+1, L]"
    ),
    "nucleotides_length": _ShapeCase(
        "nuc_loss", {"terms": ("nuc",)}, _shape_nucleotides_length, "nucleotides [B, A, L+1]"
    ),
}

_SHAPE_RE = re.compile(r"[\(\[]\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*[\)\]]")


def _shapes_in(message: str) -> set[tuple[int, ...]]:
    """Every ``(3, 4)`` / ``[3, 4]`` / ``torch.Size([3, 4])`` shape written in ``message``."""
    return {tuple(int(n) for n in m.split(",")) for m in _SHAPE_RE.findall(message)}


def _expect_value_error(
    ctx: _Case,
    loss: LossTarget,
    bad: MultiTaskBatch,
    details: dict[str, object],
    missing_in: Callable[[str], str],
    *,
    what: str,
    silently: str,
    expected: tuple[type[Exception], ...] = (ValueError,),
    grad: bool = True,
) -> None:
    """Run ``bad`` through ``loss``: it must raise ``ValueError`` whose message names all.

    ``missing_in(message)`` says what the message fails to name ("" when nothing).
    ``expected`` widens the accepted exception types (a ``TypeError`` for a prediction that
    is not a tensor at all); ``grad=False`` runs ``bad`` as it is, for outputs that cannot
    require grad (a Python list).

    Raises:
        ContractViolation: if nothing is raised, another exception is, or something is missing.
    """
    # Warnings are recorded, not raised: under ``filterwarnings=error`` a warning would look
    # like an exception the loss raised, when it only warned and went on.
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        try:
            run = bad.with_grad() if grad else bad
            value = _value(ctx, _forward(loss.make(**bad.loss_kwargs), run))
        except expected as exc:
            error: Exception | None = exc
        except ContractViolation:
            raise
        except Exception as exc:
            error = exc
        else:
            error = None
    if warned:
        first = warned[0]
        details = {
            **details,
            "warned": f"{first.category.__name__}: {first.message}"
            + (f" (and {len(warned) - 1} more)" if len(warned) > 1 else ""),
        }
    wanted = " or ".join(e.__name__ for e in expected)
    if error is None:
        only = " with only a warning" if warned else ""
        raise ctx.violation(
            f"{what} was {silently}{only} instead of raising {wanted}",
            {**details, "returned": _num(value)},
        )
    if isinstance(error, expected):
        missing = missing_in(str(error))
        if missing:
            raise ctx.violation(
                f"the {wanted} for {what} does not name {missing}",
                {**details, "exception": _exc(error)},
            ) from error
        return
    raise ctx.violation(
        f"{what} raised {type(error).__name__}, not {wanted}",
        {**details, "exception": _exc(error)},
    ) from error


def _names(message: str, name: str) -> bool:
    """``name`` appears as a whole identifier (``penalty`` is not found in ``nuc_penalty``)."""
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message) is not None


def check_shape_mismatch(loss: LossTarget, batch: MultiTaskBatch, *, term: str, case: str) -> None:
    """C-SHAPE-1: a mismatched shape raises ``ValueError`` naming the term and both shapes.

    ``case`` (a key of :data:`LOSS_SHAPE_CASES`) turns the valid batch into one bad variant,
    e.g. a unifrac prediction ``[B, B+1]`` against a ``[B, B]`` target or a ``[B, 1]``
    prediction against a ``[B]`` target. The loss must raise ``ValueError`` (or a subclass)
    whose message names the term (or the mismatched tensor) and both shapes, written as
    ``(3, 4)``, ``[3, 4]`` or ``torch.Size([3, 4])``. A silent result (broadcast, slice) or any
    other exception is a violation.

    Raises:
        ContractViolation: on a silent result, another exception, or an unhelpful message.
        HarnessUsageError: on an unknown case, a term that does not match it, or a batch the
            case does not apply to.
    """
    if case not in LOSS_SHAPE_CASES:
        raise HarnessUsageError(
            f"case must be one of {', '.join(LOSS_SHAPE_CASES)}, got case={case!r}"
        )
    spec = LOSS_SHAPE_CASES[case]
    term = _check_term(term, (spec.term,))
    batch = _check_batch(batch, term)
    classifier = spec.options.get("classifier")
    if classifier is not None and batch.is_classifier != classifier:
        raise HarnessUsageError(f"case {case!r} needs is_classifier={classifier}")
    encoder = spec.options.get("encoder_type")
    if encoder is not None and batch.encoder_type != encoder:
        raise HarnessUsageError(f"case {case!r} needs encoder_type={encoder!r}")
    if spec.options.get("embeddings") is False and batch.uses_embeddings:
        raise HarnessUsageError(f"case {case!r} needs base_prediction, not embeddings")
    bad, bad_key, other_key = spec.build(batch)
    bad_shape = tuple(bad.outputs.get(bad_key, bad.targets.get(bad_key, torch.empty(0))).shape)
    other_shape: tuple[int, ...]
    if other_key == "embeddings":
        other_key, other_shape = "base_prediction", (batch.batch_size, batch.batch_size)
    else:
        other = bad.outputs.get(other_key, bad.targets.get(other_key))
        assert other is not None
        other_shape = tuple(other.shape)
    ctx = _Case("C-SHAPE-1", term, check_shape_mismatch, batch, {"case": case})
    details: dict[str, object] = {
        "mismatch": f"{spec.description}: {bad_key} {bad_shape} vs {other_key} {other_shape}",
    }

    def missing_in(message: str) -> str:
        missing = []
        if not (_names(message, term) or _names(message, bad_key)):
            missing.append(f"the term {term!r} (or the tensor {bad_key!r})")
        shapes = _shapes_in(message)
        for key, shape in ((bad_key, bad_shape), (other_key, other_shape)):
            if shape not in shapes:
                missing.append(f"the shape of {key} {shape}")
        return " and ".join(missing)

    _expect_value_error(
        ctx,
        loss,
        bad,
        details,
        missing_in,
        what="a shape mismatch",
        silently="accepted silently (broadcast or sliced)",
    )


# --------------------------------------------------------------------------- C-INPUT-1


@dataclass(frozen=True)
class _InputCase:
    term: str
    options: dict[str, Any]
    build: Callable[[MultiTaskBatch], MultiTaskBatch]
    names: tuple[str, ...]
    description: str


def _first_valid(batch: MultiTaskBatch, head: str) -> tuple[MultiTaskBatch, tuple[int, ...]]:
    """The batch and the index of a valid position of ``head`` (made valid if there is none).

    For count the index is into ``mask`` ``[B, A]``, for nuc into ``nuc_mask`` ``[B, A, L]``.
    """
    key = "mask" if head == "count" else "nuc_mask"
    mask = batch.targets[key]
    found = torch.nonzero(mask != 0)
    if found.shape[0]:
        return batch, tuple(int(i) for i in found[0].tolist())
    at = (0,) * mask.dim()
    tg, pad = dict(batch.targets), dict(batch.padded)
    tg[key] = mask.clone()
    tg[key][at] = 1
    out_key = "count_prediction" if head == "count" else "nuc_predictions"
    pad[out_key] = pad[out_key].clone()
    pad[out_key][at] = False
    if head == "nuc":
        tg["nucleotides"] = tg["nucleotides"].clone()
        tg["nucleotides"][at] = 0
    return _replace(batch, targets=tg, padded=pad), at


def _input_class_id(value: Callable[[int], int]) -> Callable[[MultiTaskBatch], MultiTaskBatch]:
    def build(b: MultiTaskBatch) -> MultiTaskBatch:
        ids = b.targets["target"].clone()
        ids[0] = value(int(b.outputs["target_prediction"].shape[1]))
        return _set(b, targets={"target": ids})

    return build


def _input_nucleotide(value: Callable[[int], int]) -> Callable[[MultiTaskBatch], MultiTaskBatch]:
    def build(b: MultiTaskBatch) -> MultiTaskBatch:
        b, at = _first_valid(b, "nuc")
        ids = b.targets["nucleotides"].clone()
        ids[at] = value(int(b.outputs["nuc_predictions"].shape[-1]))
        return _set(b, targets={"nucleotides": ids})

    return build


def _input_kwarg(name: str, value: float) -> Callable[[MultiTaskBatch], MultiTaskBatch]:
    def build(b: MultiTaskBatch) -> MultiTaskBatch:
        return _replace(b, loss_kwargs={**b.loss_kwargs, name: value})

    return build


def _input_class_weight(value: float) -> Callable[[MultiTaskBatch], MultiTaskBatch]:
    def build(b: MultiTaskBatch) -> MultiTaskBatch:
        k = int(b.outputs["target_prediction"].shape[1])
        weights = b.loss_kwargs.get("class_weights")
        w = (
            weights.detach().clone().float()
            if isinstance(weights, Tensor)
            else torch.ones(k, device=b.device)
        )
        w[-1] = value
        return _replace(b, loss_kwargs={**b.loss_kwargs, "class_weights": w})

    return build


#: C-INPUT-1 cases: name -> (term, ``multitask_batches`` options, what the message must name).
LOSS_INPUT_CASES: dict[str, _InputCase] = {
    "class_id_equal_k": _InputCase(
        "target_loss", _CLS, _input_class_id(lambda k: k), ("target_loss",), "class id K"
    ),
    "class_id_negative": _InputCase(
        "target_loss", _CLS, _input_class_id(lambda k: -1), ("target_loss",), "class id -1"
    ),
    "nucleotide_id_equal_v": _InputCase(
        "nuc_loss",
        {"terms": ("nuc",)},
        _input_nucleotide(lambda v: v),
        ("nuc_loss",),
        "nucleotide id V at a valid position",
    ),
    "nucleotide_id_negative": _InputCase(
        "nuc_loss",
        {"terms": ("nuc",)},
        _input_nucleotide(lambda v: -1),
        ("nuc_loss",),
        "nucleotide id -1 at a valid position",
    ),
    "penalty_negative": _InputCase(
        "base_loss",
        {"terms": ("base",)},
        _input_kwarg("penalty", -1.0),
        ("penalty",),
        "penalty=-1.0",
    ),
    "nuc_penalty_nan": _InputCase(
        "nuc_loss",
        {"terms": ("nuc",)},
        _input_kwarg("nuc_penalty", math.nan),
        ("nuc_penalty",),
        "nuc_penalty=nan",
    ),
    "target_penalty_inf": _InputCase(
        "target_loss",
        {"terms": ("target",)},
        _input_kwarg("target_penalty", math.inf),
        ("target_penalty",),
        "target_penalty=inf",
    ),
    "count_penalty_negative": _InputCase(
        "count_loss",
        {"terms": ("count",)},
        _input_kwarg("count_penalty", -0.5),
        ("count_penalty",),
        "count_penalty=-0.5",
    ),
    "class_weight_negative": _InputCase(
        "target_loss",
        _CLS,
        _input_class_weight(-1.0),
        ("class_weights",),
        "a class weight of -1.0",
    ),
    "class_weight_nan": _InputCase(
        "target_loss",
        _CLS,
        _input_class_weight(math.nan),
        ("class_weights",),
        "a class weight of nan",
    ),
}


def check_invalid_inputs(loss: LossTarget, batch: MultiTaskBatch, *, term: str, case: str) -> None:
    """C-INPUT-1: an invalid value raises ``ValueError`` naming the term or the argument.

    ``case`` (a key of :data:`LOSS_INPUT_CASES`) plants one invalid value in the valid batch:
    a class id ``K`` or ``-1``, a nucleotide id ``V`` or ``-1`` at a valid position (the
    message must name the term), a negative / NaN / infinite penalty or class weight (the
    message must name the constructor argument). Raising at construction or in ``forward`` are
    both accepted; a silent result or another exception type is a violation.

    Raises:
        ContractViolation: on a silent result, another exception, or an unhelpful message.
        HarnessUsageError: on an unknown case or a term / batch the case does not apply to.
    """
    if case not in LOSS_INPUT_CASES:
        raise HarnessUsageError(
            f"case must be one of {', '.join(LOSS_INPUT_CASES)}, got case={case!r}"
        )
    spec = LOSS_INPUT_CASES[case]
    term = _check_term(term, (spec.term,))
    batch = _check_batch(batch, term)
    if spec.options.get("classifier") and not batch.is_classifier:
        raise HarnessUsageError(f"case {case!r} needs a classification batch")
    bad = spec.build(batch)
    ctx = _Case("C-INPUT-1", term, check_invalid_inputs, batch, {"case": case})
    details: dict[str, object] = {"invalid value": spec.description}
    _expect_value_error(
        ctx,
        loss,
        bad,
        details,
        lambda message: ", ".join(name for name in spec.names if not _names(message, name)),
        what=spec.description,
        silently="accepted silently",
    )


# --------------------------------------------------------------------------- C-NONFINITE-1

_POISON = (math.nan, math.inf, -math.inf)


def check_nonfinite_detection(
    loss: LossTarget, batch: MultiTaskBatch, *, term: str, bad: int = 2
) -> None:
    """C-NONFINITE-1: NaN/inf at valid positions of a prediction raise a telling error.

    The first ``bad`` valid entries of the term's prediction (fewer if it has fewer) are set to
    NaN, +inf, -inf in turn; a valid position is made if the batch has none. The loss must
    raise an exception (any ``Exception``) whose message names the term, the tensor key (e.g.
    ``count_prediction``, ``embeddings``) and the number of bad entries. Returning a value,
    finite or not, is a violation.

    Raises:
        ContractViolation: on a returned value or a message lacking term, key or count.
        HarnessUsageError: for total_loss, an unknown term, ``bad < 1``, or a unifrac
            base_prediction with ``B = 1`` (no valid entry).
    """
    term = _check_term(term, tuple(_HEAD_OF))
    batch = _check_batch(batch, term)
    if not isinstance(bad, int) or bad < 1:
        raise HarnessUsageError(f"bad must be an int >= 1, got bad={bad!r}")
    head = _HEAD_OF[term]
    work = batch
    if head in ("count", "nuc"):
        work, _ = _first_valid(batch, head)
    key = work.output_key(head)
    valid = work.valid(key)
    positions = torch.nonzero(valid)[:bad]
    if positions.shape[0] == 0:
        raise HarnessUsageError(
            f"check_nonfinite_detection: outputs[{key!r}] has no valid entry (unifrac "
            "base_prediction with B = 1); draw B >= 2"
        )
    poisoned = work.outputs[key].detach().clone()
    planted = torch.zeros(poisoned.shape, dtype=torch.bool, device=poisoned.device)
    for i, at in enumerate(positions.tolist()):
        poisoned[tuple(at)] = _POISON[i % len(_POISON)]
        planted[tuple(at)] = True
    out = dict(work.outputs)
    out[key] = poisoned
    run = _replace(work, outputs=out).with_grad()
    count = int(positions.shape[0])
    ctx = _Case("C-NONFINITE-1", term, check_nonfinite_detection, batch, {"bad": bad})
    details: dict[str, object] = {
        "planted": f"outputs[{key!r}] at " + _positions(planted, poisoned),
    }
    try:
        value = _value(ctx, _forward(loss.make(**run.loss_kwargs), run))
    except ContractViolation:
        raise
    except Exception as exc:
        message = str(exc)
        missing = [
            what
            for what, ok in (
                (f"the term {term!r}", _names(message, term)),
                (f"the tensor {key!r}", _names(message, key)),
                (f"the number of bad entries ({count})", _names(message, str(count))),
            )
            if not ok
        ]
        if missing:
            raise ctx.violation(
                f"the error for non-finite valid values does not name {', '.join(missing)}",
                {**details, "exception": _exc(exc)},
            ) from exc
        return
    kind = "a finite number" if bool(torch.isfinite(value.detach()).all()) else "a non-finite value"
    raise ctx.violation(
        f"non-finite values at valid positions were not detected: {term} returned {kind}",
        {**details, "returned": _num(value)},
    )


# --------------------------------------------------------------------------- C-WEIGHT-1


def check_zero_class_weights(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-WEIGHT-1: class weights whose selected targets sum to 0 give exactly 0, not 0/0.

    The batch's class weights (ones if it has none) are set to 0 on every class that occurs in
    the targets. ``target_loss`` must be exactly 0 and its gradient finite (0/0 in forward
    gives NaN, and its backward NaN gradients even when forward is patched up).

    Raises:
        ContractViolation: if forward/backward raises, the value is not exactly 0, or a
            gradient entry is not finite.
        HarnessUsageError: for another term or a regression batch.
    """
    term = _check_term(term, ("target_loss",))
    batch = _check_batch(batch, term)
    if not batch.is_classifier:
        raise HarnessUsageError("check_zero_class_weights needs a classification batch")
    k = int(batch.outputs["target_prediction"].shape[1])
    weights = batch.loss_kwargs.get("class_weights")
    w = (
        weights.detach().clone().float()
        if isinstance(weights, Tensor)
        else torch.ones(k, device=batch.device)
    )
    w[batch.targets["target"].long()] = 0.0  # every class that occurs, repeats harmless
    zeroed = _replace(batch, loss_kwargs={**batch.loss_kwargs, "class_weights": w})
    ctx = _Case("C-WEIGHT-1", term, check_zero_class_weights, batch)
    run = zeroed.with_grad()
    what = f"class weights {w.tolist()} (0 on every class in the targets)"
    value = _run(ctx, loss, run, what)
    details: dict[str, object] = {"class weights": what, "value": _num(value)}
    if not (bool(torch.isfinite(value.detach()).all()) and bool((value.detach() == 0).all())):
        raise ctx.violation(
            "target_loss is not exactly 0 when the selected class weights sum to 0",
            {**details, "tolerance": "none: exactly 0 required"},
        )
    for key, grad in _run_grads(ctx, value, run, what).items():
        if grad is not None and not bool(torch.isfinite(grad).all()):
            g = grad.detach().cpu()
            raise ctx.violation(
                f"gradient for outputs[{key!r}] is not finite when the selected class weights "
                "sum to 0",
                {**details, "bad gradient": _positions(~torch.isfinite(g), g)},
            )


# --------------------------------------------------------------------------- C-REF-1


def check_reference_values(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-REF-1: ``term`` agrees with the float64 reference within the dtype's tolerance.

    The tolerance is :func:`tolerance` of the *input* dtype (so half inputs are judged at half
    precision, whatever precision the loss computes in) with ``n`` and ``scale`` from
    :func:`_budget`. Terms whose reference is not representable in the result dtype
    (see :func:`check_finite_values`) are not compared.

    Raises:
        ContractViolation: if forward raises or the value is outside the tolerance.
        HarnessUsageError: on an unknown term or a batch without the head.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    case = _Case("C-REF-1", term, check_reference_values, batch)
    ref = reference_losses(batch)[term]
    if not _representable(ref, _owed_dtype(batch)):
        return  # C-FINITE-1's condition: no value is owed, so none is compared
    value = _run(case, loss, batch.with_grad(), "the batch")
    n, scale = _budget(batch, term)
    tol = tolerance(batch.dtype, n=n, scale=scale)
    message = _compare(value, torch.tensor(ref, dtype=torch.float64), tol)
    if message is not None:
        raise case.violation(
            f"{term} disagrees with the float64 reference",
            {
                "value": _num(value),
                "reference": f"{ref:.9g} (float64)",
                "tolerance": _tolerance_text(tol, batch.dtype, n, scale),
                "comparison": message,
            },
        )


# --------------------------------------------------------------------------- C-DIST-1


def check_pairwise_distances(
    loss: LossTarget, batch: MultiTaskBatch, *, term: str = "base_loss"
) -> None:
    """C-DIST-1: pairwise distances of the embeddings agree with the float64 reference.

    ``loss.pairwise_distances(embeddings)`` must be ``[B, B]`` and, for every pair whose
    reference distance is representable, within ``tolerance(dtype, n=E)`` of it *relatively*
    (an exact duplicate must give 0, rows 1e-6 apart about 1e-6, never a clamp floor). For
    every pair the gradient of ``d[i, j]`` with respect to the embeddings must be finite; for
    a pair at a positive distance it must match the reference ``(e_i - e_j) / d`` (a unit
    vector, non-zero) within ``tolerance(dtype, n=E, scale=1)``. Gradients are owed only when
    every distance of the batch is representable (see :func:`check_finite_gradients`).

    Raises:
        ContractViolation: on a wrong shape, a wrong distance, or a wrong / non-finite
            gradient.
        HarnessUsageError: for another term or a batch without embeddings.
    """
    term = _check_term(term, ("base_loss",))
    batch = _check_batch(batch, term)
    if not batch.uses_embeddings:
        raise HarnessUsageError(
            "check_pairwise_distances needs a unifrac batch with outputs['embeddings'] "
            "(multitask_batches(terms=('base',), encoder_type='unifrac', embeddings=True))"
        )
    case = _Case("C-DIST-1", term, check_pairwise_distances, batch)
    emb = batch.outputs["embeddings"].detach().clone().requires_grad_(True)
    size, dim = int(emb.shape[0]), int(emb.shape[1])
    try:
        dist = loss.pairwise_distances(emb)
    except Exception as exc:
        raise case.violation("compute_pairwise_distances raised", {"exception": _exc(exc)}) from exc
    if not isinstance(dist, Tensor) or tuple(dist.shape) != (size, size):
        shape = tuple(dist.shape) if isinstance(dist, Tensor) else type(dist).__name__
        raise case.violation(
            f"compute_pairwise_distances returned {shape}, expected ({size}, {size})"
        )
    ref = torch.from_numpy(reference_pairwise_distances(emb))
    owed_dtype = torch.promote_types(
        torch.float32 if batch.dtype in _HALF else batch.dtype, dist.dtype
    )
    owed = torch.isfinite(ref) & (ref.abs() <= float(torch.finfo(owed_dtype).max) / 4)
    tol = tolerance(batch.dtype, n=dim, scale=0.0)
    d = dist.detach().cpu().double()
    close = (d - ref).abs() <= tol.atol + tol.rtol * ref.abs()
    wrong = owed & ~close
    if bool(wrong.any()):
        dup = "exact duplicates" if bool((ref[wrong] == 0).any()) else "distinct rows"
        raise case.violation(
            f"pairwise distances disagree with the float64 reference ({dup} among them)",
            {
                "wrong distance": _positions(wrong, d, also=ref),
                "tolerance": _tolerance_text(tol, batch.dtype, dim, 0.0) + ", elementwise",
            },
        )
    if not bool(owed.all()):
        # Gradients of a [B, B] computation share one backward; a pair whose distance
        # overflows may poison it (0 * inf), and then the loss is unrepresentable anyway, so
        # no gradient is owed (as in C-FINITE-2).
        return
    grad_tol = tolerance(batch.dtype, n=dim, scale=1.0)
    e64 = emb.detach().cpu().double()
    for i in range(size):
        for j in range(size):
            if i == j or not bool(owed[i, j]):
                continue
            try:
                (grad,) = torch.autograd.grad(dist[i, j], emb, retain_graph=True, allow_unused=True)
            except Exception as exc:
                raise case.violation(
                    f"backward of d[{i}, {j}] raised", {"exception": _exc(exc)}
                ) from exc
            g = (grad if grad is not None else torch.zeros_like(emb)).detach().cpu()
            pair = f"d[{i}, {j}] = {float(d[i, j]):.9g} (reference {float(ref[i, j]):.9g})"
            if not bool(torch.isfinite(g).all()):
                raise case.violation(
                    f"gradient of the distance of rows {i} and {j} is not finite",
                    {"pair": pair, "bad gradient": _positions(~torch.isfinite(g), g)},
                )
            if float(ref[i, j]) == 0.0:
                continue
            expected = torch.zeros_like(e64)
            # (e_i - e_j) / d written on halves, as the reference distance is, so huge rows
            # do not overflow.
            direction = (e64[i] * 0.5 - e64[j] * 0.5) / (ref[i, j] * 0.5)
            expected[i] += direction
            expected[j] -= direction
            message = _compare(g, expected, grad_tol)
            if message is not None:
                raise case.violation(
                    f"gradient of the distance of rows {i} and {j} is not the unit vector "
                    "(e_i - e_j) / d (clamped or detached?)",
                    {
                        "pair": pair,
                        "tolerance": _tolerance_text(grad_tol, batch.dtype, dim, 1.0),
                        "comparison": message,
                    },
                )


# --------------------------------------------------------------------------- C-DTYPE-1


def _as_float32(batch: MultiTaskBatch) -> MultiTaskBatch:
    """The same values in float32 (exact for float16/bfloat16); masks and ids unchanged."""
    masks = ("mask", "nuc_mask")
    return _replace(
        batch,
        outputs={k: v.detach().float() for k, v in batch.outputs.items()},
        targets={
            k: v.float() if v.is_floating_point() and k not in masks else v
            for k, v in batch.targets.items()
        },
    )


def check_half_precision(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-DTYPE-1: half inputs whose float32 result is finite give a finite, close result.

    The target runs on the float16/bfloat16 batch and on the same values in float32. When the
    float32 result is finite (not inf/NaN, and no exception), the half-input result must be
    finite and within
    ``tolerance(half dtype, n, scale)`` (from :func:`_budget`) of it.

    Raises:
        ContractViolation: if forward raises, or the half result is non-finite or too far.
        HarnessUsageError: for a batch that is not float16/bfloat16.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    if batch.dtype not in _HALF:
        raise HarnessUsageError(
            f"check_half_precision needs a float16 or bfloat16 batch, got {batch.dtype}"
        )
    case = _Case("C-DTYPE-1", term, check_half_precision, batch)
    try:
        wide_result = _forward(loss.make(**batch.loss_kwargs), _as_float32(batch).with_grad())
    except Exception:  # the float32 run has no finite result: nothing is owed for halves
        return
    wide = _value(case, wide_result)
    if not bool(torch.isfinite(wide.detach()).all()):
        return
    half = _run(case, loss, batch.with_grad(), f"the {_dtype_name(batch.dtype)} batch")
    n, scale = _budget(batch, term)
    tol = tolerance(batch.dtype, n=n, scale=scale)
    info: dict[str, object] = {"half inputs": _num(half), "float32 inputs": _num(wide)}
    if not bool(torch.isfinite(half.detach()).all()):
        raise case.violation(
            f"{term} is not finite for {_dtype_name(batch.dtype)} inputs although it is finite "
            "for the same values in float32 (accumulate in float32 or wider)",
            info,
        )
    message = _compare(half, wide, tol)
    if message is not None:
        raise case.violation(
            f"{term} for {_dtype_name(batch.dtype)} inputs is not within half-precision "
            "tolerance of the float32 result",
            {
                **info,
                "tolerance": _tolerance_text(tol, batch.dtype, n, scale),
                "comparison": message,
            },
        )


# --------------------------------------------------------------------------- C-DEVICE-1


def check_device_agreement(
    loss: LossTarget, batch: MultiTaskBatch, *, term: str, device: str = "cuda"
) -> None:
    """C-DEVICE-1: ``term`` and its gradients on ``device`` equal those on cpu within tolerance.

    Both runs use the same values. The value is compared with ``tolerance(dtype, n, scale)``
    from :func:`_budget`; each gradient with ``n`` the same and ``scale`` its largest cpu
    magnitude. Non-finite entries must match in place.

    Raises:
        ContractViolation: if a run raises or the results differ beyond tolerance.
        HarnessUsageError: on an unknown term or a batch without the head.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    case = _Case("C-DEVICE-1", term, check_device_agreement, batch, {"device": device})
    cpu_run = batch.to("cpu").with_grad()
    dev_run = batch.to(device).with_grad()
    cpu_value = _run(case, loss, cpu_run, "cpu")
    dev_value = _run(case, loss, dev_run, device)
    n, scale = _budget(batch.to("cpu"), term)
    tol = tolerance(batch.dtype, n=n, scale=scale)
    message = _compare_nan(dev_value, cpu_value, tol)
    if message is not None:
        raise case.violation(
            f"{term} on {device} differs from cpu",
            {
                "on cpu": _num(cpu_value),
                f"on {device} (again)" if device == "cpu" else f"on {device}": _num(dev_value),
                "tolerance": _tolerance_text(tol, batch.dtype, n, scale),
                "comparison": message,
            },
        )
    cpu_grads = _run_grads(case, cpu_value, cpu_run, "cpu")
    dev_grads = _run_grads(case, dev_value, dev_run, device)
    for key, cg in cpu_grads.items():
        dg = dev_grads.get(key)
        if cg is None and dg is None:
            continue
        if cg is None or dg is None:
            raise case.violation(
                f"gradient for outputs[{key!r}] is None on {'cpu' if cg is None else device} only"
            )
        finite = cg[torch.isfinite(cg)]
        g_scale = float(finite.abs().max()) if finite.numel() else 0.0
        g_tol = tolerance(batch.dtype, n=n, scale=g_scale)
        message = _compare_nan(dg, cg, g_tol)
        if message is not None:
            raise case.violation(
                f"gradient of {term} for outputs[{key!r}] on {device} differs from cpu",
                {
                    "tolerance": _tolerance_text(g_tol, batch.dtype, n, g_scale),
                    "comparison": message,
                },
            )


def _compare_nan(actual: Tensor, expected: Tensor, tol: Tolerance) -> str | None:
    return mismatch(
        actual.detach().cpu().double(), expected.detach().cpu().double(), tol, equal_nan=True
    )


# --------------------------------------------------------------------------- C-INVARIANT-1


def _perfect(batch: MultiTaskBatch, head: str) -> MultiTaskBatch:
    """The batch with the regression head's prediction equal to its truth at valid entries."""
    out, tg, pad = dict(batch.outputs), dict(batch.targets), dict(batch.padded)
    if head == "target":
        pred = out["target_prediction"]
        out["target_prediction"] = tg["target"].to(pred.dtype).clone()
        tg["target"] = out["target_prediction"].to(tg["target"].dtype)
    elif head == "count":
        pred = out["count_prediction"].detach()
        valid = batch.valid("count_prediction")
        out["count_prediction"] = torch.where(valid, tg["counts"].to(pred.dtype), pred)
        tg["counts"] = out["count_prediction"].to(tg["counts"].dtype)
    else:
        true = tg["base_target"]
        if batch.uses_embeddings:
            dtype = out.pop("embeddings").dtype
            pad.pop("embeddings")
            pred = true.to(dtype).clone()
            pad["base_prediction"] = torch.eye(pred.shape[0], dtype=torch.bool, device=pred.device)
        else:
            old = out["base_prediction"].detach()
            pred = torch.where(batch.valid("base_prediction"), true.to(old.dtype), old)
        out["base_prediction"] = pred
        tg["base_target"] = pred.to(true.dtype)
    return _replace(batch, outputs=out, targets=tg, padded=pad)


def check_invariants(
    loss: LossTarget,
    batch: MultiTaskBatch,
    *,
    term: str,
    permutation: Sequence[int] | None = None,
) -> None:
    """C-INVARIANT-1: non-negative, 0 when perfect, permutation invariant, a weighted total.

    * non-negative (NaN fails);
    * for the regression terms (regression target, count, base) exactly 0 when the
      prediction equals the truth at every valid entry (padding keeps its values);
    * invariant, within ``tolerance(result dtype, n, scale)``, to permuting the samples by
      ``permutation`` (default: reversed), rows and columns together for pairwise tensors
      (the order of the reduction changes, so bit-identity is not required);
    * for ``total_loss``: equal, within ``tolerance(result dtype, n=4, scale=sum|p * t|)``, to
      ``target_penalty * target + count_penalty * count + penalty * base + nuc_penalty * nuc``
      of the terms returned alongside it.

    Raises:
        ContractViolation: naming the invariant that fails.
        HarnessUsageError: on an unknown term, a batch without the head, or a permutation
            that is not one of ``range(B)``.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    size = batch.batch_size
    order = list(permutation) if permutation is not None else list(range(size - 1, -1, -1))
    if sorted(order) != list(range(size)):
        raise HarnessUsageError(
            f"permutation must be a permutation of range({size}), got {permutation!r}"
        )
    case = _Case(
        "C-INVARIANT-1",
        term,
        check_invariants,
        batch,
        {"permutation": list(permutation) if permutation is not None else None},
    )
    run = batch.with_grad()
    try:
        result = _forward(loss.make(**batch.loss_kwargs), run)
    except Exception as exc:
        raise case.violation("raised on the batch", {"exception": _exc(exc)}) from exc
    value = _value(case, result)
    if bool(torch.isnan(value.detach()).any()):
        raise case.violation(f"{term} is NaN (so not >= 0)", {"value": _num(value)})
    if not bool((value.detach() >= 0).all()):
        raise case.violation(f"{term} is negative (not >= 0)", {"value": _num(value)})
    dtype = value.dtype if value.is_floating_point() else batch.dtype
    head = _HEAD_OF.get(term)
    if head in ("count", "base") or (head == "target" and not batch.is_classifier):
        assert head is not None
        perfect = _perfect(batch, head)
        zero = _run(case, loss, perfect.with_grad(), "a batch whose prediction equals the truth")
        if not bool((zero.detach() == 0).all()):
            raise case.violation(
                f"{term} is not exactly 0 when the prediction equals the truth",
                {
                    "perfect input": perfect.describe(),
                    "value": _num(zero),
                    "tolerance": "none: exactly 0 required",
                },
            )
    permuted = _take_rows(batch, order)
    moved = _run(case, loss, permuted.with_grad(), f"the batch permuted by {order}")
    n, scale = _budget(batch, term)
    tol = tolerance(dtype, n=n, scale=scale)
    message = _compare(moved, value, tol)
    if message is not None:
        raise case.violation(
            f"{term} changed when the samples were permuted by {order}",
            {
                "original": _num(value),
                "permuted": _num(moved),
                "tolerance": _tolerance_text(tol, dtype, n, scale),
                "comparison": message,
            },
        )
    if term == "total_loss":
        _check_total(case, result, value, batch, dtype)


def _check_total(
    case: _Case, result: Mapping[str, Any], total: Tensor, batch: MultiTaskBatch, dtype: torch.dtype
) -> None:
    parts: list[str] = []
    weighted = 0.0
    magnitude = 0.0
    for head, penalty_name in _PENALTY_OF.items():
        sub = _value(dataclasses.replace(case, term=f"{head}_loss"), result)
        penalty = float(batch.loss_kwargs.get(penalty_name, 1.0))
        if penalty == 0:
            parts.append(f"0 * {head}_loss")
            continue  # 0 * a finite term is 0; the total need not carry it
        contribution = penalty * float(sub.detach().double().sum())
        weighted += contribution
        magnitude += abs(contribution)
        parts.append(f"{penalty:g} * {float(sub.detach().double().sum()):.9g}")
    if not math.isfinite(weighted):
        return
    tol = tolerance(dtype, n=4, scale=magnitude)
    message = _compare(total, torch.tensor(weighted, dtype=torch.float64), tol)
    if message is not None:
        raise case.violation(
            "total_loss is not the penalty-weighted sum of the terms",
            {
                "total_loss": _num(total),
                "weighted sum": f"{' + '.join(parts)} = {weighted:.9g}",
                "tolerance": _tolerance_text(tol, dtype, 4, magnitude),
                "comparison": message,
            },
        )


# --------------------------------------------------------------------------- C-PURE-1


def _snapshot(batch: MultiTaskBatch) -> dict[str, Tensor]:
    snap = {f"outputs[{k!r}]": v.detach().clone() for k, v in batch.outputs.items()}
    snap.update({f"targets[{k!r}]": v.detach().clone() for k, v in batch.targets.items()})
    for k, v in batch.loss_kwargs.items():
        if isinstance(v, Tensor):
            snap[f"loss_kwargs[{k!r}]"] = v.detach().clone()
    return snap


def check_purity(loss: LossTarget, batch: MultiTaskBatch, *, term: str) -> None:
    """C-PURE-1: the loss never modifies its inputs and never detaches a prediction.

    With NaN garbage at every padded position, the outputs, targets (masks and ids included)
    and tensor constructor arguments must be bit-identical after forward and backward to clones
    taken before. And every valid entry whose float64 reference gradient is clearly non-zero
    must get a non-zero finite gradient: ``|ref| >= 64 * finfo(output dtype).tiny`` (no
    legitimate underflow) and, for the nucleotide logits and a Huber target, at least
    ``16 eps`` of the scale at which their gradients cancel (see :func:`_cancel`).

    Raises:
        ContractViolation: if an input changed, the term is detached, or a gradient that must be
            non-zero is zero or non-finite.
        HarnessUsageError: on an unknown term or a batch without the head.
    """
    term = _check_term(term)
    batch = _check_batch(batch, term)
    case = _Case("C-PURE-1", term, check_purity, batch)
    run = batch.with_grad().with_garbage(math.nan)
    before = _snapshot(run)
    value = _run(case, loss, run, "the batch with NaN at padded positions")
    grads = _run_grads(case, value, run, "the batch with NaN at padded positions")
    after = _snapshot(run)
    for name, old in before.items():
        new = after[name]
        if not _identical(old, new):
            changed = (
                "shape/dtype"
                if old.shape != new.shape or old.dtype != new.dtype
                else (
                    _positions(
                        ~((old == new) | (torch.isnan(old) & torch.isnan(new)))
                        if old.is_floating_point()
                        else old != new,
                        new,
                        also=old,
                    )
                )
            )
            raise case.violation(
                f"the loss modified its input {name} in place",
                {"changed": changed},
            )
    ref_grads = reference_gradients(batch, term)
    for key, ref in ref_grads.items():
        floor = max(
            64 * float(torch.finfo(batch.outputs[key].dtype).tiny), _cancel(batch, key, term)
        )
        limit = float(torch.finfo(batch.outputs[key].dtype).max) / 4
        must = batch.valid(key).cpu() & (ref.abs() >= floor) & (ref.abs() <= limit)
        if not bool(must.any()):
            continue
        grad = grads.get(key)
        if grad is None:
            raise case.violation(
                f"outputs[{key!r}] gets no gradient from {term} (detached or not used) although "
                "its valid entries have non-zero error",
                {
                    "value": _num(value),
                    "requires_grad": str(value.requires_grad),
                    "expected non-zero": _positions(must, ref),
                },
            )
        g = grad.detach().cpu()
        bad = must & ((g == 0) | ~torch.isfinite(g))
        if bool(bad.any()):
            raise case.violation(
                f"gradient of {term} for outputs[{key!r}] is zero or non-finite at valid entries "
                "with non-zero error (detached or masked out)",
                {"bad gradient": _positions(bad, g, also=ref)},
            )


def _cancel(batch: MultiTaskBatch, key: str, term: str) -> float:
    """Gradient size below which rounding may legitimately give exactly 0.

    Two gradients cancel at a fixed scale: the cross-entropy's ``softmax(x)[y] - 1`` rounds to
    0 for a confident prediction (exactly ``~1e-9``), at most ``weight / n`` for ``n`` valid
    positions; and Huber's, written as a quadratic plus a linear part that cancel inside
    ``|d| < delta``, is ``d`` up to an absolute rounding of ``eps * 2 delta * weight / n``.
    Entries below ``16 eps`` of that scale are not judged.
    """
    if key == "nuc_predictions":
        head, count = "nuc", int((batch.targets["nuc_mask"] != 0).sum())
        scale = 1.0
    elif (
        key == "target_prediction"
        and not batch.is_classifier
        and batch.loss_kwargs.get("target_loss_type") == "huber"
    ):
        head, count = "target", batch.outputs[key].numel()
        scale = 2.0  # 2 * delta, delta = 1 (torch's default)
    else:
        return 0.0
    eps = float(torch.finfo(_owed_dtype(batch)).eps)
    weight = 1.0 if term != "total_loss" else float(batch.loss_kwargs.get(_PENALTY_OF[head], 1.0))
    return 16 * eps * scale * weight / max(count, 1)


#: Rule id -> its check, for tools that run one rule by id.
LOSS_CHECKS: dict[str, Callable[..., None]] = {
    "C-SCALAR-1": check_scalar_terms,
    "C-FINITE-1": check_finite_values,
    "C-FINITE-2": check_finite_gradients,
    "C-MASK-1": check_mask_values,
    "C-MASK-2": check_mask_gradients,
    "C-PAD-1": check_padding_invariance,
    "C-EMPTY-1": check_empty_terms,
    "C-RAGGED-1": check_ragged_batches,
    "C-SHAPE-1": check_shape_mismatch,
    "C-INPUT-1": check_invalid_inputs,
    "C-NONFINITE-1": check_nonfinite_detection,
    "C-WEIGHT-1": check_zero_class_weights,
    "C-REF-1": check_reference_values,
    "C-DIST-1": check_pairwise_distances,
    "C-DTYPE-1": check_half_precision,
    "C-DEVICE-1": check_device_agreement,
    "C-INVARIANT-1": check_invariants,
    "C-PURE-1": check_purity,
}
