"""Float64 references for the loss terms: NumPy values and torch autograd gradients.

Every reference takes the *valid* entries by boolean indexing and applies the textbook
formula to them, independently of any implementation under test:

* regression target: mean over all elements of ``(p - t)²`` (mse), ``|p - t|`` (mae) or the
  Huber loss with ``delta = 1.0`` (``0.5 d²`` for ``|d| <= 1``, else ``|d| - 0.5``);
* classification target: ``mean(-log_probs[i, y_i])``, or with class weights
  ``sum(w[y_i] * nll_i) / sum(w[y_i])``, and exactly 0 when the selected weights sum to 0;
* count: mean of ``(p - t)²`` over valid ASVs (``mask != 0``);
* base: mean of ``(p - t)²`` over the off-diagonal entries (unifrac, ``[B, B]``) or over all
  ``[B, 1]`` entries (faith_pd);
* nucleotide: mean over valid positions of ``logsumexp(logits) - logits[id]``;
* a mean over zero entries is 0; the total is ``target_penalty * target + count_penalty *
  count + penalty * base + nuc_penalty * nuc``.

Values are computed in float64 without spurious intermediate overflow or underflow: a mean is
taken of the values divided by their largest magnitude and scaled back, and differences are
taken of halves (``p/2 - t/2``) so ``finfo.max - (-finfo.max)`` stays finite. The result is
``inf`` only when the true value exceeds float64's range. Gradients use the same formulas in
float64 torch autograd; entries that are not selected (padding, the unifrac diagonal) get an
exact 0 gradient, and an exact duplicate pair of embeddings has distance 0 with 0 gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robustness.errors import HarnessUsageError

if TYPE_CHECKING:
    from robustness.strategies import MultiTaskBatch

__all__ = [
    "HUBER_DELTA",
    "LOSS_TERMS",
    "reference_base_loss",
    "reference_count_loss",
    "reference_gradients",
    "reference_losses",
    "reference_nucleotide_loss",
    "reference_pairwise_distances",
    "reference_target_loss",
    "reference_total_loss",
]

#: Huber threshold (torch's default ``delta``).
HUBER_DELTA = 1.0
#: Term names, in the order of ``MultiTaskLoss.forward``'s result.
LOSS_TERMS = ("target_loss", "count_loss", "base_loss", "nuc_loss", "total_loss")

_PENALTIES = {
    "target_loss": "target_penalty",
    "count_loss": "count_penalty",
    "base_loss": "penalty",
    "nuc_loss": "nuc_penalty",
}

ArrayLike = Any  # a torch.Tensor or a numpy array


# --------------------------------------------------------------------------- numpy helpers


def _floats(name: str, x: ArrayLike) -> np.ndarray:
    """``x`` as a float64 numpy array (torch half dtypes converted exactly)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _ids(name: str, x: ArrayLike) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if not np.issubdtype(array.dtype, np.integer):
        raise HarnessUsageError(f"{name} must hold integer ids, got dtype {array.dtype}")
    return array.astype(np.int64)


def _valid(x: ArrayLike) -> np.ndarray:
    """Boolean validity of a bool/int/float mask: ``mask != 0``."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.asarray(array != 0)


def _same_shape(term: str, a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise HarnessUsageError(
            f"{term} reference: {a_name} shape {a.shape} does not match {b_name} {b.shape}"
        )


def _mean(values: np.ndarray) -> float:
    """Mean without intermediate overflow: of ``values / max|values|``, scaled back."""
    if values.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        scale = np.max(np.abs(values))
        if not np.isfinite(scale) or scale == 0:
            return float(np.mean(values))
        return float(np.mean(values / scale) * scale)


def _mean_square(values: np.ndarray) -> float:
    """``mean(values**2)`` without intermediate overflow or underflow."""
    if values.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        scale = np.max(np.abs(values))
        if not np.isfinite(scale) or scale == 0:
            return float(np.mean(values * values))
        ratio = values / scale
        return float(np.mean(ratio * ratio) * scale * scale)


def _half_diff(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(pred - true) / 2``, finite for any finite inputs (halving first cannot overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return pred * 0.5 - true * 0.5


def _regression(pred: np.ndarray, true: np.ndarray, loss_type: str) -> float:
    half = _half_diff(pred, true)
    if loss_type == "mse":
        return 4.0 * _mean_square(half)
    a = np.abs(half)
    if loss_type == "mae":
        return 2.0 * _mean(a)
    # Huber on d = 2a: 0.5 d² = 2a² for d <= delta, else d - 0.5 = 2a - 0.5; both halved here.
    with np.errstate(over="ignore", invalid="ignore"):
        halved = np.where(a <= HUBER_DELTA / 2, a * a, a - HUBER_DELTA / 4)
    return 2.0 * _mean(halved)


# --------------------------------------------------------------------------- value references


def reference_target_loss(
    pred: ArrayLike,
    true: ArrayLike,
    *,
    is_classifier: bool = False,
    loss_type: str = "mse",
    class_weights: ArrayLike | None = None,
) -> float:
    """Float64 target loss: regression (mse/mae/huber) or (class-weighted) NLL.

    Args:
        pred: regression predictions (any shape) or classification log-probs ``[B, K]``.
        true: regression truths of ``pred``'s shape, or class ids ``[B]`` in ``[0, K)``.
        is_classifier: NLL over log-probabilities instead of regression.
        loss_type: ``"mse"``, ``"mae"`` or ``"huber"`` (regression only).
        class_weights: optional ``[K]`` non-negative weights (classification only).

    Returns:
        The loss as a Python float (0.0 for no elements, or selected weights summing to 0).

    Raises:
        HarnessUsageError: on mismatched shapes, an unknown ``loss_type``, or class ids out of
            range.
    """
    p = _floats("target_prediction", pred)
    if not is_classifier:
        if loss_type not in ("mse", "mae", "huber"):
            raise HarnessUsageError(
                f"target_loss reference: loss_type must be mse, mae or huber, got {loss_type!r}"
            )
        t = _floats("target", true)
        _same_shape("target_loss", "target_prediction", p, "target", t)
        return _regression(p.reshape(-1), t.reshape(-1), loss_type)
    ids = _ids("target", true)
    if p.ndim != 2 or ids.shape != (p.shape[0],):
        raise HarnessUsageError(
            f"target_loss reference: classification needs log-probs [B, K] and ids [B], got "
            f"{p.shape} and {ids.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= p.shape[1]):
        raise HarnessUsageError(
            f"target_loss reference: class ids must lie in [0, {p.shape[1]}), got {ids.tolist()}"
        )
    nll = -p[np.arange(p.shape[0]), ids]
    if class_weights is None:
        return _mean(nll)
    selected = _floats("class_weights", class_weights)[ids]
    total = float(np.sum(selected))
    if total == 0.0:
        return 0.0
    # Normalised weights sum to 1, so the weighted sum of non-negative NLLs cannot overflow.
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sum((selected / total) * nll))


def reference_count_loss(pred: ArrayLike, true: ArrayLike, mask: ArrayLike) -> float:
    """Float64 count loss: MSE over valid ASVs.

    Args:
        pred: ``[B, A, 1]`` predicted counts.
        true: ``[B, A, 1]`` true counts.
        mask: ``[B, A]``, valid where ``mask != 0`` (bool, int or float).

    Returns:
        The loss as a Python float (0.0 with no valid ASV).

    Raises:
        HarnessUsageError: on mismatched shapes.
    """
    p, t, valid = _floats("count_prediction", pred), _floats("counts", true), _valid(mask)
    _same_shape("count_loss", "count_prediction", p, "counts", t)
    if p.shape[:-1] != valid.shape or p.ndim != 3:
        raise HarnessUsageError(
            f"count_loss reference: mask shape {valid.shape} does not match count_prediction "
            f"{p.shape}"
        )
    return _regression(p[valid], t[valid], "mse")


def reference_base_loss(
    pred: ArrayLike, true: ArrayLike, *, encoder_type: str = "unifrac"
) -> float:
    """Float64 base loss: MSE over off-diagonal ``[B, B]`` entries (unifrac) or ``[B, 1]``.

    Args:
        pred: ``[B, B]`` predicted distances (unifrac; diagonal ignored) or ``[B, 1]``
            (faith_pd).
        true: same shape as ``pred``.
        encoder_type: ``"unifrac"`` or ``"faith_pd"``.

    Returns:
        The loss as a Python float (0.0 for unifrac with ``B = 1``).

    Raises:
        HarnessUsageError: on mismatched or non-square shapes, or an unknown encoder type.
    """
    p, t = _floats("base_prediction", pred), _floats("base_target", true)
    _same_shape("base_loss", "base_prediction", p, "base_target", t)
    if encoder_type == "faith_pd":
        return _regression(p.reshape(-1), t.reshape(-1), "mse")
    if encoder_type != "unifrac":
        raise HarnessUsageError(
            f"base_loss reference: encoder_type must be unifrac or faith_pd, got {encoder_type!r}"
        )
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise HarnessUsageError(f"base_loss reference: unifrac needs [B, B], got {p.shape}")
    off_diagonal = ~np.eye(p.shape[0], dtype=bool)
    return _regression(p[off_diagonal], t[off_diagonal], "mse")


def reference_nucleotide_loss(logits: ArrayLike, ids: ArrayLike, mask: ArrayLike) -> float:
    """Float64 nucleotide loss: mean cross-entropy over valid positions.

    Args:
        logits: ``[B, A, L, V]``.
        ids: ``[B, A, L]`` integer ids, in ``[0, V)`` at valid positions.
        mask: ``[B, A, L]``, valid where ``mask != 0``.

    Returns:
        The loss as a Python float (0.0 with no valid position).

    Raises:
        HarnessUsageError: on mismatched shapes or ids out of range at valid positions.
    """
    x, y, valid = _floats("nuc_predictions", logits), _ids("nucleotides", ids), _valid(mask)
    if x.ndim != 4 or y.shape != x.shape[:-1] or valid.shape != x.shape[:-1]:
        raise HarnessUsageError(
            f"nuc_loss reference: need logits [B, A, L, V] with ids and mask [B, A, L], got "
            f"{x.shape}, {y.shape}, {valid.shape}"
        )
    rows, labels = x[valid], y[valid]  # [n, V], [n]
    if labels.size == 0:
        return 0.0
    if labels.min() < 0 or labels.max() >= x.shape[-1]:
        raise HarnessUsageError(
            f"nuc_loss reference: ids at valid positions must lie in [0, {x.shape[-1]})"
        )
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        top = rows.max(axis=-1)
        log_sum = np.log(np.sum(np.exp(rows - top[:, None]), axis=-1))
        nll = (top - rows[np.arange(labels.size), labels]) + log_sum
    return _mean(nll)


def reference_pairwise_distances(embeddings: ArrayLike) -> np.ndarray:
    """Float64 Euclidean distances between every pair of rows.

    Args:
        embeddings: ``[B, E]``.

    Returns:
        ``[B, B]`` float64 array with a zero diagonal (exact duplicates give exactly 0).

    Raises:
        HarnessUsageError: if ``embeddings`` is not 2-D.
    """
    e = _floats("embeddings", embeddings)
    if e.ndim != 2:
        raise HarnessUsageError(f"pairwise reference: embeddings must be [B, E], got {e.shape}")
    half = _half_diff(e[:, None, :], e[None, :, :])  # [B, B, E]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        scale = np.max(np.abs(half), axis=-1, initial=0.0)  # [B, B]
        safe = np.where(scale > 0, scale, 1.0)
        ratio = half / safe[..., None]
        return np.where(scale > 0, 2.0 * scale * np.sqrt(np.sum(ratio * ratio, axis=-1)), 0.0)


def reference_total_loss(
    losses: Mapping[str, float],
    *,
    penalty: float = 1.0,
    nuc_penalty: float = 1.0,
    target_penalty: float = 1.0,
    count_penalty: float = 1.0,
) -> float:
    """Penalty-weighted sum of the terms (absent terms and zero-penalty terms count as 0).

    Args:
        losses: term name (``target_loss``, ``count_loss``, ``base_loss``, ``nuc_loss``) ->
            value.
        penalty: weight of ``base_loss``.
        nuc_penalty: weight of ``nuc_loss``.
        target_penalty: weight of ``target_loss``.
        count_penalty: weight of ``count_loss``.
    """
    weights = {
        "target_loss": target_penalty,
        "count_loss": count_penalty,
        "base_loss": penalty,
        "nuc_loss": nuc_penalty,
    }
    # A zero penalty removes its term: 0 times a finite (if unrepresentable) loss is 0, not
    # the 0 * inf = nan that float arithmetic would give.
    with np.errstate(over="ignore", invalid="ignore"):
        return float(
            sum(
                np.float64(weights[k]) * np.float64(losses.get(k, 0.0))
                for k in weights
                if weights[k] != 0
            )
        )


def reference_losses(batch: MultiTaskBatch) -> dict[str, float]:
    """Float64 reference value of every term and the total for a drawn batch.

    Absent heads are 0.0. With ``outputs["embeddings"]`` (unifrac) the base prediction is
    :func:`reference_pairwise_distances` of the embeddings. Penalties, ``target_loss_type``
    and ``class_weights`` come from ``batch.loss_kwargs`` (constructor defaults otherwise).

    Returns:
        ``{"target_loss", "count_loss", "base_loss", "nuc_loss", "total_loss"}`` -> float.
    """
    out, tg, kw = batch.outputs, batch.targets, batch.loss_kwargs
    losses = dict.fromkeys(LOSS_TERMS[:-1], 0.0)
    if "target_prediction" in out:
        losses["target_loss"] = reference_target_loss(
            out["target_prediction"],
            tg["target"],
            is_classifier=batch.is_classifier,
            loss_type=kw.get("target_loss_type", "mse"),
            class_weights=kw.get("class_weights"),
        )
    if "count_prediction" in out:
        losses["count_loss"] = reference_count_loss(
            out["count_prediction"], tg["counts"], tg["mask"]
        )
    if batch.encoder_type == "unifrac" and "embeddings" in out:
        distances = reference_pairwise_distances(out["embeddings"])
        losses["base_loss"] = reference_base_loss(distances, tg["base_target"])
    elif "base_prediction" in out:
        losses["base_loss"] = reference_base_loss(
            out["base_prediction"], tg["base_target"], encoder_type=batch.encoder_type
        )
    if "nuc_predictions" in out:
        losses["nuc_loss"] = reference_nucleotide_loss(
            out["nuc_predictions"], tg["nucleotides"], tg["nuc_mask"]
        )
    losses["total_loss"] = reference_total_loss(losses, **_penalties(kw))
    return losses


def _penalties(kwargs: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(kwargs.get(name, 1.0)) for name in _PENALTIES.values()}


# --------------------------------------------------------------------------- torch gradients


def _t_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a 1-D float64 tensor; exactly 0 (no graph) for zero entries."""
    if values.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    return values.mean()


def _t_regression(pred: torch.Tensor, true: torch.Tensor, loss_type: str) -> torch.Tensor:
    """mse/mae/huber of selected float64 entries, written on halves as in the NumPy version."""
    half = pred * 0.5 - true * 0.5
    if loss_type == "mse":
        return 4.0 * _t_mean(half * half)
    a = half.abs()
    if loss_type == "mae":
        return 2.0 * _t_mean(a)
    return 2.0 * _t_mean(torch.where(a <= HUBER_DELTA / 2, a * a, a - HUBER_DELTA / 4))


def _t_pairwise(emb: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` distances; pairs at distance 0 are a constant 0 (zero gradient)."""
    size = emb.shape[0]
    half = emb.unsqueeze(1) * 0.5 - emb.unsqueeze(0) * 0.5  # [B, B, E]
    # The scale only guards the range: |x| = s * |x / s| for any constant s > 0.
    scale = half.detach().abs().amax(dim=-1)
    apart = scale > 0
    distances = torch.zeros((size, size), dtype=torch.float64)
    ratio = half[apart] / scale[apart].unsqueeze(-1)
    distances[apart] = 2.0 * scale[apart] * (ratio * ratio).sum(dim=-1).sqrt()
    return distances


def _t_term(batch: MultiTaskBatch, head: str, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The float64 term ``head`` of ``batch`` as a function of ``leaves``."""
    tg, kw = batch.targets, batch.loss_kwargs
    if head == "target":
        pred = leaves["target_prediction"]
        if not batch.is_classifier:
            true = tg["target"].detach().cpu().double()
            loss_type = kw.get("target_loss_type", "mse")
            return _t_regression(pred.reshape(-1), true.reshape(-1), loss_type)
        ids = tg["target"].detach().cpu().long()
        nll = -pred[torch.arange(pred.shape[0]), ids]
        weights: torch.Tensor | None = kw.get("class_weights")
        if weights is None:
            return _t_mean(nll)
        selected = weights.detach().cpu().double()[ids]
        total = selected.sum()
        if total == 0:
            return torch.zeros((), dtype=torch.float64)
        return ((selected / total) * nll).sum()
    if head == "count":
        valid = (tg["mask"] != 0).cpu()
        pred = leaves["count_prediction"][valid]
        true = tg["counts"].detach().cpu().double()[valid]
        return _t_regression(pred, true, "mse")
    if head == "base":
        true = tg["base_target"].detach().cpu().double()
        if "embeddings" in leaves and batch.encoder_type == "unifrac":
            pred = _t_pairwise(leaves["embeddings"])
        else:
            pred = leaves["base_prediction"]
        if batch.encoder_type == "faith_pd":
            return _t_regression(pred.reshape(-1), true.reshape(-1), "mse")
        off = ~torch.eye(pred.shape[0], dtype=torch.bool)
        return _t_regression(pred[off], true[off], "mse")
    valid = (tg["nuc_mask"] != 0).cpu()
    rows = leaves["nuc_predictions"][valid]  # [n, V]
    labels = tg["nucleotides"].detach().cpu().long()[valid]
    if labels.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    # Shift by the (constant) row maximum: cross-entropy is shift-invariant, and the shifted
    # logits keep softmax, hence the gradient, accurate even for logits near finfo.max.
    shifted = rows - rows.detach().amax(dim=-1, keepdim=True)
    log_sum = shifted.exp().sum(dim=-1).log()
    nll = log_sum - shifted[torch.arange(labels.numel()), labels]
    return nll.mean()


def reference_gradients(batch: MultiTaskBatch, term: str) -> dict[str, torch.Tensor]:
    """Float64 gradients of one term (or the total) with respect to the batch's outputs.

    Computed by autograd on the textbook formula applied to the boolean-selected valid
    entries, so padded positions (and the unifrac diagonal) get an exact 0 whatever they hold.

    Args:
        batch: a :class:`~robustness.strategies.MultiTaskBatch` (any device).
        term: ``"target"``, ``"count"``, ``"base"``, ``"nuc"`` (or ``"target_loss"``, ...),
            or ``"total"`` / ``"total_loss"`` for the penalty-weighted sum (every output).

    Returns:
        Output key -> cpu float64 gradient of that output's shape, for the outputs feeding
        ``term`` (``embeddings`` for base when the batch uses them).

    Raises:
        HarnessUsageError: on an unknown term or one the batch does not have.
    """
    from robustness.strategies import term_name

    if term in ("total", "total_loss"):
        heads = list(batch.terms)
        weights = {h: _penalties(batch.loss_kwargs)[_PENALTIES[_loss_name(h)]] for h in heads}
    else:
        head = term_name(term)
        batch.output_key(head)  # raises if the batch lacks the head
        heads, weights = [head], {head: 1.0}
    keys = [batch.output_key(h) for h in heads]
    leaves = {k: batch.outputs[k].detach().cpu().double().requires_grad_(True) for k in keys}
    # Each term's gradient on its own, then weighted: one rounding per entry. Weighting inside
    # autograd's chain would carry a tiny penalty (down to finfo.tiny) through every
    # intermediate of the term's backward, where products underflow to subnormals and lose
    # digits that the weighted gradient itself can still hold.
    grads: dict[str, torch.Tensor] = {}
    for h, key in zip(heads, keys, strict=True):
        leaf = leaves[key]
        value = _t_term(batch, h, leaves)
        grad = None
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value, [leaf], allow_unused=True)
        grad = torch.zeros_like(leaf) if grad is None else grad
        grads[key] = grad * weights[h]  # exact for a single term's weight of 1
    return grads


def _loss_name(head: str) -> str:
    return {"target": "target_loss", "count": "count_loss", "base": "base_loss"}.get(
        head, "nuc_loss"
    )
