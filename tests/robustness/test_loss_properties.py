"""The loss checks fail on deliberately broken losses and pass on aam.

Each broken variant below is a small subclass of the built-in ``MultiTaskLoss`` carrying one
plausible bug (multiplicative masking, 0/0 on an empty mask, ``sqrt`` without a guard, slicing
on a shape mismatch, squares in float16, ...). Every check must raise ``ContractViolation`` with
its own rule id on a fixed small batch that exposes the bug, and must stay silent on aam.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from hypothesis import given
from torch import Tensor

from aam.training.losses import MultiTaskLoss, compute_pairwise_distances
from robustness.contract.test_loss_rules import (
    ALL_PADDING,
    DUPLICATES,
    HALF_SQUARES,
    NAN_PADDING,
    REMAINDER,
    SINGLE,
)
from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    from_plain,
    resolve_qualified_name,
)
from robustness.properties import _gradients as gradients_module
from robustness.properties import _losses as losses_module
from robustness.properties._gradients import GRADIENT_CHECKS, check_reference_gradients
from robustness.properties._losses import (
    LOSS_CHECKS,
    LOSS_INPUT_CASES,
    LOSS_SHAPE_CASES,
    LOSS_TERMS,
    check_device_agreement,
    check_empty_terms,
    check_finite_gradients,
    check_finite_values,
    check_half_precision,
    check_invalid_inputs,
    check_invariants,
    check_mask_gradients,
    check_mask_values,
    check_nonfinite_detection,
    check_padding_invariance,
    check_pairwise_distances,
    check_purity,
    check_ragged_batches,
    check_reference_values,
    check_scalar_terms,
    check_shape_mismatch,
    check_zero_class_weights,
)
from robustness.strategies import MultiTaskBatch, multitask_batches
from robustness.target import LossTarget, load_loss_target
from robustness.tolerances import tolerance

AAM = load_loss_target()


def _target(cls: type, pairwise: Any = compute_pairwise_distances) -> LossTarget:
    return LossTarget(spec=f"{__name__}:{cls.__name__}", loss_cls=cls, pairwise_distances=pairwise)


def _valid(mask: Tensor) -> Tensor:
    return (mask != 0).unsqueeze(-1)


# --------------------------------------------------------------------------- broken variants


class _Unsqueezed(MultiTaskLoss):
    """count_loss returned as shape [1] (a ``.sum(dim=0, keepdim=True)`` left in)."""

    def compute_count_loss(self, count_pred, count_true, mask):
        return super().compute_count_loss(count_pred, count_true, mask).reshape(1)


class _ZeroOverZero(MultiTaskLoss):
    """Masked mean as sum / count: 0/0 = NaN when no ASV is valid."""

    def compute_count_loss(self, count_pred, count_true, mask):
        valid = _valid(mask)
        diff = torch.where(valid, count_pred, 0) - torch.where(valid, count_true, 0)
        return (diff * diff).sum() / valid.sum()


class _MultiplicativeMask(MultiTaskLoss):
    """Masking by multiplication: NaN * 0 = NaN."""

    def compute_count_loss(self, count_pred, count_true, mask):
        weight = (mask != 0).unsqueeze(-1).to(count_pred.dtype)
        return ((count_pred - count_true) ** 2 * weight).sum() / weight.sum().clamp(min=1)


class _SingleWhere(MultiTaskLoss):
    """Selects after squaring: the value is clean, but the gradient of the discarded branch is
    0 * 2 (nan - t) = NaN."""

    def compute_count_loss(self, count_pred, count_true, mask):
        valid = _valid(mask)
        squares = torch.where(valid, (count_pred - count_true) ** 2, 0.0)
        return squares.sum() / valid.sum().clamp(min=1)


class _MeanOverRectangle(MultiTaskLoss):
    """Divides by every ASV of the padded rectangle, not by the valid ones."""

    def compute_count_loss(self, count_pred, count_true, mask):
        valid = _valid(mask)
        diff = torch.where(valid, count_pred, 0) - torch.where(valid, count_true, 0)
        return (diff * diff).mean()


class _DetachedZero(MultiTaskLoss):
    """Returns a fresh constant when nothing is valid: total.backward() misses the head."""

    def compute_count_loss(self, count_pred, count_true, mask):
        if not bool((mask != 0).any()):
            return torch.zeros((), dtype=count_pred.dtype, device=count_pred.device)
        return super().compute_count_loss(count_pred, count_true, mask)


class _PairCount(MultiTaskLoss):
    """Mean over B * (B - 1) pairs: 0/0 at B = 1."""

    def compute_base_loss(self, base_pred, base_true, encoder_type="unifrac"):
        size = base_pred.shape[0]
        off = ~torch.eye(size, dtype=torch.bool, device=base_pred.device)
        diff = torch.where(off, base_pred, 0) - torch.where(off, base_true, 0)
        return (diff * diff).sum() / (size * (size - 1))


class _Slicing(MultiTaskLoss):
    """The historical remainder-batch fix: slice the prediction to the target's width."""

    def compute_base_loss(self, base_pred, base_true, encoder_type="unifrac"):
        return super().compute_base_loss(
            base_pred[:, : base_true.shape[1]], base_true, encoder_type
        )


class _Broadcasting(MultiTaskLoss):
    """Plain ``((p - t) ** 2).mean()``: [B, 1] against [B] broadcasts to [B, B]."""

    def compute_target_loss(self, target_pred, target_true, is_classifier=False):
        return ((target_pred - target_true) ** 2).mean()


class _VagueShapeError(MultiTaskLoss):
    """Raises, but says neither which term nor which shapes."""

    def compute_base_loss(self, base_pred, base_true, encoder_type="unifrac"):
        if base_pred.shape != base_true.shape:
            raise ValueError("shape mismatch")
        return super().compute_base_loss(base_pred, base_true, encoder_type)


class _ShapelessError(MultiTaskLoss):
    """Names the term and the tensors, but not their shapes."""

    def compute_base_loss(self, base_pred, base_true, encoder_type="unifrac"):
        if base_pred.shape != base_true.shape:
            raise ValueError("base_loss: base_prediction does not match base_target")
        return super().compute_base_loss(base_pred, base_true, encoder_type)


class _ClampedIds(MultiTaskLoss):
    """Clamps nucleotide ids into range instead of rejecting them."""

    def compute_nucleotide_loss(self, nuc_pred, nuc_true, mask):
        return super().compute_nucleotide_loss(
            nuc_pred, nuc_true.clamp(0, nuc_pred.shape[-1] - 1), mask
        )


class _AbsPenalty(MultiTaskLoss):
    """Takes the magnitude of a penalty instead of validating it."""

    def __init__(self, penalty: float = 1.0, **kwargs: Any) -> None:
        super().__init__(penalty=abs(penalty), **kwargs)


class _NanToNum(MultiTaskLoss):
    """Replaces NaN/inf predictions by numbers: a silently wrong finite loss."""

    def compute_count_loss(self, count_pred, count_true, mask):
        return super().compute_count_loss(torch.nan_to_num(count_pred), count_true, mask)


class _TerseError(MultiTaskLoss):
    """Detects NaN but says nothing about where."""

    def compute_count_loss(self, count_pred, count_true, mask):
        if not bool(torch.isfinite(count_pred[(mask != 0)]).all()):
            raise RuntimeError("bad values")
        return super().compute_count_loss(count_pred, count_true, mask)


class _WeightedZeroOverZero(MultiTaskLoss):
    """sum(w[y] * nll) / sum(w[y]) without a guard for all-zero selected weights."""

    def compute_target_loss(self, target_pred, target_true, is_classifier=False):
        if not is_classifier:
            return super().compute_target_loss(target_pred, target_true, is_classifier)
        nll = -target_pred.gather(1, target_true.long().unsqueeze(1)).squeeze(1)
        w = self.class_weights[target_true.long()]
        return (w * nll).sum() / w.sum()


class _HalvedMse(MultiTaskLoss):
    """The 0.5 * MSE convention where the contract says MSE."""

    def compute_count_loss(self, count_pred, count_true, mask):
        return 0.5 * super().compute_count_loss(count_pred, count_true, mask)


def _gram_distances(embeddings: Tensor) -> Tensor:
    """|a|² + |b|² - 2ab, clamped and square-rooted: cancels for near-duplicates."""
    norms = (embeddings * embeddings).sum(dim=1)
    squares = norms[:, None] + norms[None, :] - 2 * embeddings @ embeddings.T
    return torch.sqrt(squares.clamp(min=1e-12))


def _unguarded_distances(embeddings: Tensor) -> Tensor:
    """Direct differences, but sqrt(0) has an infinite derivative: 0 * inf = NaN."""
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    return torch.sqrt((diff * diff).sum(dim=-1))


class _UnguardedSqrtLoss(MultiTaskLoss):
    """Base prediction from ``sqrt`` of squared differences, unguarded at 0."""

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        if "embeddings" in outputs and encoder_type == "unifrac":
            embeddings = outputs["embeddings"]
            outputs = {k: v for k, v in outputs.items() if k != "embeddings"}
            outputs["base_prediction"] = _unguarded_distances(embeddings)
        return super().forward(outputs, targets, is_classifier, encoder_type)


class _HalfSquares(MultiTaskLoss):
    """Squares in the input dtype: float16 overflows at differences above 256."""

    def compute_count_loss(self, count_pred, count_true, mask):
        valid = _valid(mask)
        diff = torch.where(valid, count_pred, 0) - torch.where(valid, count_true, 0)
        return ((diff * diff).sum() / valid.sum().clamp(min=1)).to(torch.float32)


class _Noisy(MultiTaskLoss):
    """Differs from run to run (as a stateful or unseeded device kernel might).

    The drift is a call counter, not ``torch.rand``: two random factors can land within the
    tolerance of each other, which made this test flaky.
    """

    calls = 0

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        losses = super().forward(outputs, targets, is_classifier, encoder_type)
        type(self).calls += 1
        losses["total_loss"] = losses["total_loss"] * (1 + 1e-3 * type(self).calls)
        return losses


class _UnweightedTotal(MultiTaskLoss):
    """Forgets the penalties in the total."""

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        losses = super().forward(outputs, targets, is_classifier, encoder_type)
        losses["total_loss"] = sum(v for k, v in losses.items() if k != "total_loss")
        return losses


class _SignedError(MultiTaskLoss):
    """Mean error instead of mean squared error: can be negative."""

    def compute_target_loss(self, target_pred, target_true, is_classifier=False):
        if is_classifier:
            return super().compute_target_loss(target_pred, target_true, is_classifier)
        return (target_pred - target_true).mean()


class _FirstSampleHeavy(MultiTaskLoss):
    """Weights the first sample twice: depends on the order of the batch."""

    def compute_target_loss(self, target_pred, target_true, is_classifier=False):
        base = super().compute_target_loss(target_pred, target_true, is_classifier)
        if is_classifier:
            return base
        first = ((target_pred[:1] - target_true[:1]) ** 2).mean()
        return base + first


class _InPlaceIds(MultiTaskLoss):
    """Sanitizes padded nucleotide ids in place: the caller's targets change."""

    def compute_nucleotide_loss(self, nuc_pred, nuc_true, mask):
        nuc_true[nuc_true < 0] = 0
        nuc_true[nuc_true >= nuc_pred.shape[-1]] = 0
        return super().compute_nucleotide_loss(nuc_pred, nuc_true, mask)


class _Detached(MultiTaskLoss):
    """Detaches the count prediction (e.g. a ``.item()`` round trip)."""

    def compute_count_loss(self, count_pred, count_true, mask):
        return super().compute_count_loss(count_pred.detach(), count_true, mask)


# --------------------------------------------------------------------------- each check kills


def _kills(rule: str, check: Any, loss: LossTarget, batch: MultiTaskBatch, **kwargs: Any) -> None:
    with pytest.raises(ContractViolation) as info:
        check(loss, batch, **kwargs)
    violation = info.value
    assert violation.rule == rule
    assert violation.term == kwargs.get("term", violation.term)
    assert "input" in violation.details
    assert violation.replay is not None


KILLS = [
    pytest.param(
        "C-SCALAR-1",
        check_scalar_terms,
        _Unsqueezed,
        REMAINDER,
        {"term": "count_loss"},
        id="scalar-shape-1",
    ),
    pytest.param(
        "C-SCALAR-1",
        check_scalar_terms,
        _Unsqueezed,
        REMAINDER,
        {"term": "total_loss"},
        id="scalar-total-shape-1",
    ),
    pytest.param(
        "C-FINITE-1",
        check_finite_values,
        _ZeroOverZero,
        ALL_PADDING,
        {"term": "count_loss"},
        id="finite-zero-over-zero",
    ),
    pytest.param(
        "C-FINITE-2",
        check_finite_gradients,
        _UnguardedSqrtLoss,
        DUPLICATES,
        {"term": "base_loss"},
        id="finite-grad-unguarded-sqrt",
    ),
    pytest.param(
        "C-MASK-1",
        check_mask_values,
        _MultiplicativeMask,
        REMAINDER,
        {"term": "count_loss"},
        id="mask-multiplicative",
    ),
    pytest.param(
        "C-MASK-2",
        check_mask_gradients,
        _MultiplicativeMask,
        REMAINDER,
        {"term": "total_loss"},
        id="mask-grad-multiplicative",
    ),
    pytest.param(
        "C-MASK-2",
        check_mask_gradients,
        _SingleWhere,
        REMAINDER,
        {"term": "count_loss"},
        id="mask-grad-single-where",
    ),
    pytest.param(
        "C-PAD-1",
        check_padding_invariance,
        _MeanOverRectangle,
        REMAINDER,
        {"term": "count_loss"},
        id="pad-mean-over-rectangle",
    ),
    pytest.param(
        "C-EMPTY-1",
        check_empty_terms,
        _DetachedZero,
        REMAINDER,
        {"term": "count_loss"},
        id="empty-detached-zero",
    ),
    pytest.param(
        "C-EMPTY-1",
        check_empty_terms,
        _ZeroOverZero,
        REMAINDER,
        {"term": "total_loss"},
        id="empty-zero-over-zero",
    ),
    pytest.param(
        "C-RAGGED-1",
        check_ragged_batches,
        _PairCount,
        REMAINDER,
        {"term": "base_loss"},
        id="ragged-pair-count",
    ),
    pytest.param(
        "C-SHAPE-1",
        check_shape_mismatch,
        _Slicing,
        REMAINDER,
        {"term": "base_loss", "case": "base_columns"},
        id="shape-slicing",
    ),
    pytest.param(
        "C-SHAPE-1",
        check_shape_mismatch,
        _VagueShapeError,
        REMAINDER,
        {"term": "base_loss", "case": "base_columns"},
        id="shape-vague-message",
    ),
    pytest.param(
        "C-SHAPE-1",
        check_shape_mismatch,
        _ShapelessError,
        REMAINDER,
        {"term": "base_loss", "case": "base_columns"},
        id="shape-message-without-shapes",
    ),
    pytest.param(
        "C-SHAPE-1",
        check_shape_mismatch,
        _Broadcasting,
        REMAINDER,
        {"term": "target_loss", "case": "target_column_vs_vector"},
        id="shape-broadcasting",
    ),
    pytest.param(
        "C-INPUT-1",
        check_invalid_inputs,
        _ClampedIds,
        REMAINDER,
        {"term": "nuc_loss", "case": "nucleotide_id_equal_v"},
        id="input-clamped-ids",
    ),
    pytest.param(
        "C-INPUT-1",
        check_invalid_inputs,
        _AbsPenalty,
        REMAINDER,
        {"term": "base_loss", "case": "penalty_negative"},
        id="input-abs-penalty",
    ),
    pytest.param(
        "C-NONFINITE-1",
        check_nonfinite_detection,
        _NanToNum,
        REMAINDER,
        {"term": "count_loss"},
        id="nonfinite-nan-to-num",
    ),
    pytest.param(
        "C-NONFINITE-1",
        check_nonfinite_detection,
        _TerseError,
        REMAINDER,
        {"term": "count_loss", "bad": 2},
        id="nonfinite-terse-error",
    ),
    pytest.param(
        "C-WEIGHT-1",
        check_zero_class_weights,
        _WeightedZeroOverZero,
        DUPLICATES,
        {"term": "target_loss"},
        id="weight-zero-over-zero",
    ),
    pytest.param(
        "C-REF-1",
        check_reference_values,
        _HalvedMse,
        REMAINDER,
        {"term": "count_loss"},
        id="ref-halved-mse",
    ),
    pytest.param(
        "C-REF-1",
        check_reference_values,
        _HalvedMse,
        REMAINDER,
        {"term": "total_loss"},
        id="ref-total-halved-mse",
    ),
    pytest.param(
        "C-DTYPE-1",
        check_half_precision,
        _HalfSquares,
        HALF_SQUARES,
        {"term": "count_loss"},
        id="dtype-half-squares",
    ),
    pytest.param(
        "C-DEVICE-1",
        check_device_agreement,
        _Noisy,
        REMAINDER,
        {"term": "total_loss", "device": "cpu"},
        id="device-nondeterministic",
    ),
    pytest.param(
        "C-INVARIANT-1",
        check_invariants,
        _UnweightedTotal,
        REMAINDER,
        {"term": "total_loss"},
        id="invariant-unweighted-total",
    ),
    pytest.param(
        "C-INVARIANT-1",
        check_invariants,
        _SignedError,
        REMAINDER,
        {"term": "target_loss"},
        id="invariant-signed-error",
    ),
    pytest.param(
        "C-INVARIANT-1",
        check_invariants,
        _FirstSampleHeavy,
        REMAINDER,
        {"term": "target_loss", "permutation": [2, 0, 1]},
        id="invariant-order",
    ),
    pytest.param(
        "C-PURE-1",
        check_purity,
        _InPlaceIds,
        REMAINDER,
        {"term": "nuc_loss"},
        id="pure-in-place-ids",
    ),
    pytest.param(
        "C-PURE-1", check_purity, _Detached, REMAINDER, {"term": "count_loss"}, id="pure-detached"
    ),
]


@pytest.mark.parametrize(("rule", "check", "cls", "batch", "kwargs"), KILLS)
def test_check_kills_its_broken_variant(rule, check, cls, batch, kwargs):
    _kills(rule, check, _target(cls), batch, **kwargs)


@pytest.mark.parametrize(
    ("pairwise", "what"),
    [(_gram_distances, "gram-cancellation"), (_unguarded_distances, "unguarded-sqrt")],
)
def test_pairwise_distance_check_kills_broken_distances(pairwise, what):
    _kills(
        "C-DIST-1",
        check_pairwise_distances,
        _target(MultiTaskLoss, pairwise),
        DUPLICATES,
        term="base_loss",
    )


def test_single_where_keeps_values_but_not_gradients():
    # The two mask rules are distinct: values bit-identical, gradients NaN.
    check_mask_values(_target(_SingleWhere), REMAINDER, term="count_loss")
    _kills("C-MASK-2", check_mask_gradients, _target(_SingleWhere), REMAINDER, term="count_loss")


def test_every_rule_has_a_kill():
    killed = {p.values[0] for p in KILLS} | {"C-DIST-1"}
    assert killed == set(LOSS_CHECKS)


@given(batch=multitask_batches(terms=("count",), min_batch=2))
def test_multiplicative_masking_dies_on_generated_batches(batch):
    if bool((batch.targets["mask"] == 0).any()):
        _kills(
            "C-MASK-1", check_mask_values, _target(_MultiplicativeMask), batch, term="count_loss"
        )


# --------------------------------------------------------------------------- aam passes


def _faith_pd(batch: MultiTaskBatch) -> MultiTaskBatch:
    """``batch`` with a faith_pd base head ([B, 1] prediction and target)."""
    size = batch.batch_size
    outputs = {k: v for k, v in batch.outputs.items() if k not in ("base_prediction", "embeddings")}
    padded = {k: v for k, v in batch.padded.items() if k in outputs}
    outputs["base_prediction"] = torch.linspace(-1.0, 2.0, size).unsqueeze(1)
    padded["base_prediction"] = torch.zeros(size, 1, dtype=torch.bool)
    targets = {**batch.targets, "base_target": torch.linspace(0.5, 1.5, size).unsqueeze(1)}
    return dataclasses.replace(
        batch, outputs=outputs, targets=targets, padded=padded, encoder_type="faith_pd"
    )


BATCHES = {
    "remainder": REMAINDER,
    "single": SINGLE,
    "all_padding": ALL_PADDING,
    "duplicates": DUPLICATES,
    "nan_padding": NAN_PADDING,
    "faith_pd": _faith_pd(REMAINDER),
    "half_squares": HALF_SQUARES,
}
ALL = ("remainder", "single", "all_padding", "duplicates", "nan_padding", "faith_pd")
HEADS = ("target_loss", "count_loss", "base_loss", "nuc_loss")
AAM_CASES: list[tuple[Any, tuple[str, ...], tuple[str, ...], dict[str, Any]]] = [
    (check_scalar_terms, LOSS_TERMS, ALL, {}),
    (check_finite_values, LOSS_TERMS, ALL, {}),
    (check_finite_gradients, LOSS_TERMS, ALL, {}),
    (check_mask_values, LOSS_TERMS, ALL, {}),
    (check_mask_gradients, LOSS_TERMS, ALL, {}),
    (check_padding_invariance, LOSS_TERMS, ALL, {}),
    (
        check_empty_terms,
        ("count_loss", "nuc_loss", "base_loss", "total_loss"),
        ("remainder", "all_padding", "duplicates"),
        {},
    ),
    (check_ragged_batches, LOSS_TERMS, ALL, {}),
    (
        check_nonfinite_detection,
        HEADS,
        ("remainder", "duplicates", "all_padding", "faith_pd"),
        {"bad": 3},
    ),
    (check_zero_class_weights, ("target_loss",), ("duplicates",), {}),
    (check_reference_values, LOSS_TERMS, ALL, {}),
    (check_pairwise_distances, ("base_loss",), ("duplicates",), {}),
    (check_half_precision, LOSS_TERMS, ("half_squares",), {}),
    (check_device_agreement, LOSS_TERMS, ("remainder", "duplicates"), {"device": "cpu"}),
    (check_invariants, LOSS_TERMS, ALL, {}),
    (check_purity, LOSS_TERMS, ALL, {}),
]


def _aam_params() -> list[Any]:
    params = []
    for check, terms, names, extra in AAM_CASES:
        for name in names:
            for term in terms:
                params.append(
                    pytest.param(
                        check,
                        BATCHES[name],
                        {"term": term, **extra},
                        id=f"{check.__name__}-{name}-{term}",
                    )
                )
    return params


@pytest.mark.parametrize(("check", "batch", "kwargs"), _aam_params())
def test_check_passes_on_aam(check, batch, kwargs):
    check(AAM, batch, **kwargs)


def _case_batch(options: dict[str, Any]) -> MultiTaskBatch:
    if options.get("encoder_type") == "faith_pd":
        return BATCHES["faith_pd"]
    return DUPLICATES if options.get("classifier") else REMAINDER


@pytest.mark.parametrize("case", list(LOSS_SHAPE_CASES))
def test_shape_check_passes_on_aam(case):
    spec = LOSS_SHAPE_CASES[case]
    check_shape_mismatch(AAM, _case_batch(spec.options), term=spec.term, case=case)


@pytest.mark.parametrize("case", list(LOSS_INPUT_CASES))
def test_input_check_passes_on_aam(case):
    spec = LOSS_INPUT_CASES[case]
    check_invalid_inputs(AAM, _case_batch(spec.options), term=spec.term, case=case)


def test_every_rule_is_checked_on_aam():
    checked = {check for check, *_ in AAM_CASES} | {check_shape_mismatch, check_invalid_inputs}
    assert checked == set(LOSS_CHECKS.values())


# --------------------------------------------------------------------------- the harness


def test_violation_replays_from_its_plain_spec():
    loss = _target(_MultiplicativeMask)
    with pytest.raises(ContractViolation) as info:
        check_mask_values(loss, REMAINDER, term="count_loss")
    replay = info.value.replay
    assert replay is not None
    assert replay.kind == "loss"
    check = resolve_qualified_name(replay.check)
    with pytest.raises(ContractViolation) as again:
        check(loss, **from_plain(replay.args))
    assert again.value.rule == "C-MASK-1"
    assert again.value.headline == info.value.headline


def test_violation_names_the_offending_positions_and_tolerance():
    with pytest.raises(ContractViolation) as info:
        check_mask_gradients(_target(_SingleWhere), REMAINDER, term="count_loss")
    text = str(info.value)
    assert "[C-MASK-2] count_loss" in text
    assert "(0, 0, 0) = nan" in text
    assert "exactly 0 required" in text
    assert "dtype=float32" in text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: check_scalar_terms(AAM, REMAINDER, term="nope"),
            "term must be",
            id="unknown-term",
        ),
        pytest.param(
            lambda: check_scalar_terms(
                AAM, _drop(REMAINDER, "count_prediction"), term="count_loss"
            ),
            "no 'count' head",
            id="missing-head",
        ),
        pytest.param(
            lambda: check_half_precision(AAM, REMAINDER, term="count_loss"),
            "float16 or bfloat16",
            id="not-half",
        ),
        pytest.param(
            lambda: check_empty_terms(AAM, REMAINDER, term="target_loss"),
            "term must be",
            id="target-cannot-be-empty",
        ),
        pytest.param(
            lambda: check_shape_mismatch(AAM, REMAINDER, term="count_loss", case="x"),
            "case must be",
            id="unknown-shape-case",
        ),
        pytest.param(
            lambda: check_pairwise_distances(AAM, REMAINDER), "embeddings", id="no-embeddings"
        ),
        pytest.param(
            lambda: check_invariants(AAM, REMAINDER, term="count_loss", permutation=[0, 0, 1]),
            "permutation",
            id="bad-permutation",
        ),
        pytest.param(
            lambda: check_finite_values(
                AAM, NAN_PADDING.with_garbage(math.nan), term="target_loss"
            ),
            None,
            id="garbage-at-padding-is-fine",
        ),
    ],
)
def test_misuse_raises_harness_usage_error(call, message):
    if message is None:
        call()
        return
    with pytest.raises(HarnessUsageError, match=message):
        call()


def _drop(batch: MultiTaskBatch, key: str) -> MultiTaskBatch:
    return dataclasses.replace(
        batch,
        outputs={k: v for k, v in batch.outputs.items() if k != key},
        padded={k: v for k, v in batch.padded.items() if k != key},
    )


def test_exports_match_definitions():
    public = {n for n in dir(losses_module) if not n.startswith("_")}
    defined = {
        n
        for n in public
        if getattr(getattr(losses_module, n), "__module__", "") == losses_module.__name__
    }
    checks = {n for n in public if n.startswith("check_")}
    assert checks <= set(losses_module.__all__)
    assert defined <= set(losses_module.__all__)
    assert all(hasattr(losses_module, n) for n in losses_module.__all__)


# --------------------------------------------------------------------------- C-GRAD-1


class _FusedCrossEntropy(torch.autograd.Function):
    """The right value; backward ``softmax - onehot`` at valid positions, ``1 / n`` forgotten."""

    @staticmethod
    def forward(ctx, logits, ids, valid, value):
        ctx.save_for_backward(logits, ids, valid)
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        logits, ids, valid = ctx.saved_tensors
        x = torch.where(valid.unsqueeze(-1), logits.float(), 0.0)
        onehot = torch.nn.functional.one_hot(ids.clamp(0, x.shape[-1] - 1), x.shape[-1])
        g = torch.where(valid.unsqueeze(-1), torch.softmax(x, dim=-1) - onehot, 0.0)
        return (g * grad).to(logits.dtype), None, None, None


class _NucNoMeanBackward(MultiTaskLoss):
    """A fused nucleotide cross-entropy whose hand-written backward forgets the mean's 1/n."""

    def compute_nucleotide_loss(self, nuc_pred, nuc_true, mask):
        with torch.no_grad():
            value = super().compute_nucleotide_loss(nuc_pred, nuc_true, mask)
        ids = torch.where(mask != 0, nuc_true.long(), 0)
        return _FusedCrossEntropy.apply(nuc_pred, ids, mask != 0, value)


class _FusedPairMse(torch.autograd.Function):
    """The right value; backward ``(p - t) / P`` off the diagonal, the factor 2 forgotten."""

    @staticmethod
    def forward(ctx, pred, true, value):
        ctx.save_for_backward(pred, true)
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        pred, true = ctx.saved_tensors
        size = pred.shape[0]
        off = ~torch.eye(size, dtype=torch.bool, device=pred.device)
        g = torch.where(off, pred.float() - true.float(), 0.0) / max(size * (size - 1), 1)
        return (g * grad).to(pred.dtype), None, None


class _BaseNoTwoBackward(MultiTaskLoss):
    """A fused unifrac base MSE whose hand-written backward forgets the factor 2."""

    def compute_base_loss(self, base_pred, base_true, encoder_type="unifrac"):
        with torch.no_grad():
            value = super().compute_base_loss(base_pred, base_true, encoder_type)
        if encoder_type != "unifrac":
            return super().compute_base_loss(base_pred, base_true, encoder_type)
        return _FusedPairMse.apply(base_pred, base_true, value)


def _only(batch: MultiTaskBatch, *keys: str) -> MultiTaskBatch:
    return dataclasses.replace(
        batch,
        outputs={k: v for k, v in batch.outputs.items() if k in keys},
        padded={k: v for k, v in batch.padded.items() if k in keys},
    )


@pytest.mark.parametrize(
    ("cls", "batch", "term"),
    [
        pytest.param(_NucNoMeanBackward, _only(REMAINDER, "nuc_predictions"), "nuc_loss", id="nuc"),
        pytest.param(_NucNoMeanBackward, REMAINDER, "total_loss", id="nuc-total"),
        pytest.param(
            _BaseNoTwoBackward, _only(REMAINDER, "base_prediction"), "base_loss", id="base"
        ),
        pytest.param(_BaseNoTwoBackward, REMAINDER, "total_loss", id="base-total"),
    ],
)
def test_gradient_check_kills_a_right_value_with_a_wrong_backward(cls, batch, term):
    # Every value rule passes: only C-GRAD-1 sees the backward.
    check_reference_values(_target(cls), batch, term=term)
    check_finite_gradients(_target(cls), batch, term=term)
    with pytest.raises(ContractViolation) as info:
        check_reference_gradients(_target(cls), batch, term=term)
    violation = info.value
    assert violation.rule == "C-GRAD-1"
    assert violation.term == term
    assert violation.replay is not None
    ratio = violation.details["gradient / reference"]
    # The median ratio names the bug: 1/2 (factor 2 forgotten) or n (1/n forgotten).
    expected = 0.5 if cls is _BaseNoTwoBackward else int((batch.targets["nuc_mask"] != 0).sum())
    assert f"median {expected:g} " in ratio, ratio


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("term", LOSS_TERMS)
def test_gradient_check_passes_on_aam(name, term):
    batch = BATCHES[name]
    if term != "total_loss":
        batch = _only(batch, batch.output_key(term.removesuffix("_loss")))
    check_reference_gradients(AAM, batch, term=term)


def test_gradient_check_is_exported_like_the_others():
    assert GRADIENT_CHECKS == {"C-GRAD-1": check_reference_gradients}
    public = {n for n in dir(gradients_module) if not n.startswith("_")}
    defined = {
        n
        for n in public
        if getattr(getattr(gradients_module, n), "__module__", "") == gradients_module.__name__
    }
    assert defined <= set(gradients_module.__all__)
    assert all(hasattr(gradients_module, n) for n in gradients_module.__all__)


# --------------------------------------------------------------------------- C-REF-1 spread


def _nuc_batch(logits: list[float], target: int, dtype: torch.dtype = torch.float32):
    """One valid position: ``[[[logits]]]`` with id ``target``, nucleotide head only."""
    x = torch.tensor([[[logits]]], dtype=dtype)
    return MultiTaskBatch(
        outputs={"nuc_predictions": x},
        targets={
            "nucleotides": torch.tensor([[[target]]]),
            "nuc_mask": torch.ones(1, 1, 1, dtype=torch.bool),
        },
        padded={"nuc_predictions": torch.zeros(x.shape, dtype=torch.bool)},
    )


class _NaiveLogsumexp(MultiTaskLoss):
    """Cross-entropy as ``logsumexp(x) - x[y]``: two huge, nearly equal numbers subtracted."""

    def compute_nucleotide_loss(self, nuc_pred, nuc_true, mask):
        super().compute_nucleotide_loss(nuc_pred, nuc_true, mask)  # aam's validation
        valid = mask != 0
        x = torch.where(valid.unsqueeze(-1), nuc_pred.float(), 0.0)
        ids = torch.where(valid, nuc_true.long(), 0)
        nll = torch.logsumexp(x, dim=-1) - x.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return torch.where(valid, nll, 0.0).sum() / valid.sum().clamp(min=1)


class _ShiftStable(MultiTaskLoss):
    """Cross-entropy from logits shifted by their (constant) maximum: accurate at any size."""

    def compute_nucleotide_loss(self, nuc_pred, nuc_true, mask):
        super().compute_nucleotide_loss(nuc_pred, nuc_true, mask)  # aam's validation
        valid = mask != 0
        x = torch.where(valid.unsqueeze(-1), nuc_pred.float(), 0.0)
        shifted = x - x.detach().amax(dim=-1, keepdim=True)
        ids = torch.where(valid, nuc_true.long(), 0)
        log_sum = shifted.exp().sum(dim=-1).log()
        nll = log_sum - shifted.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return torch.where(valid, nll, 0.0).sum() / valid.sum().clamp(min=1)


EQUAL_HUGE = {
    "1e7": _nuc_batch([1e7, 1e7], 1),
    "1e4": _nuc_batch([1e4, 1e4], 0),
    "finfo.max": _nuc_batch([float(torch.finfo(torch.float32).max)] * 2, 1),
}


def test_old_magnitude_tolerance_hid_the_naive_cross_entropy():
    # nuc_loss of [1e7, 1e7] is log 2; lse - x[y] gives 1.0, and a tolerance scaled by the
    # logits' magnitude (max|x| + log V, the old C-REF-1 scale) accepted it.
    batch = EQUAL_HUGE["1e7"]
    value = _NaiveLogsumexp()(*batch.loss_inputs())["nuc_loss"]
    assert float(value) == 1.0
    old = tolerance(torch.float32, n=2, scale=1e7 + math.log(2))
    assert losses_module._compare(value, torch.tensor(math.log(2)), old) is None


@pytest.mark.parametrize("size", sorted(EQUAL_HUGE))
def test_reference_check_scales_cross_entropy_by_the_logits_spread(size):
    batch = EQUAL_HUGE[size]
    with pytest.raises(ContractViolation) as info:
        check_reference_values(_target(_NaiveLogsumexp), batch, term="nuc_loss")
    assert info.value.rule == "C-REF-1"
    assert "scale=0.693147" in str(info.value)  # spread 0 + log 2
    # ...and the gradient of exp(x - logsumexp(x)) is off too.
    with pytest.raises(ContractViolation):
        check_reference_gradients(_target(_NaiveLogsumexp), batch, term="nuc_loss")
    # A shift-stable cross-entropy meets both tolerances: they are attainable.
    check_reference_values(_target(_ShiftStable), batch, term="nuc_loss")
    check_reference_gradients(_target(_ShiftStable), batch, term="nuc_loss")


# --------------------------------------------------------------------------- messages


class _NanNuc(MultiTaskLoss):
    """nuc_loss is NaN whatever the input."""

    def compute_nucleotide_loss(self, nuc_pred, nuc_true, mask):
        return super().compute_nucleotide_loss(nuc_pred, nuc_true, mask) * math.nan


class _NanCount(MultiTaskLoss):
    """count_loss is NaN whatever the input."""

    def compute_count_loss(self, count_pred, count_true, mask):
        return super().compute_count_loss(count_pred, count_true, mask) * math.nan


class _WarnsAndBroadcasts(MultiTaskLoss):
    """Regression target as F.mse_loss: a shape mismatch only warns, then broadcasts."""

    def compute_target_loss(self, target_pred, target_true, is_classifier=False):
        if is_classifier:
            return super().compute_target_loss(target_pred, target_true, is_classifier)
        return torch.nn.functional.mse_loss(target_pred.float(), target_true.float())


class _RejectsAnyNan(MultiTaskLoss):
    """count_loss checks the whole tensor, padding included, for NaN."""

    def compute_count_loss(self, count_pred, count_true, mask):
        if bool(torch.isnan(count_pred).any()):
            raise ValueError("count_loss: count_prediction has NaN")
        return super().compute_count_loss(count_pred, count_true, mask)


class _NanCountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, value):
        ctx.shape = pred.shape
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, math.nan, dtype=grad.dtype), None


class _NanCountGradient(MultiTaskLoss):
    """count_loss's backward is NaN everywhere (a count-only bug)."""

    def compute_count_loss(self, count_pred, count_true, mask):
        with torch.no_grad():
            value = super().compute_count_loss(count_pred, count_true, mask)
        return _NanCountBackward.apply(count_pred, value)


def test_nan_against_nan_is_reported_as_nan_not_as_a_difference():
    with pytest.raises(ContractViolation) as info:
        check_padding_invariance(_target(_NanNuc), REMAINDER, term="nuc_loss")
    comparison = info.value.details["comparison"]
    assert "Expected nan but got nan" not in comparison
    assert comparison.startswith("both results are NaN")


def test_a_nan_term_is_called_nan_not_negative():
    with pytest.raises(ContractViolation) as info:
        check_invariants(_target(_NanCount), REMAINDER, term="count_loss")
    assert info.value.headline == "count_loss is NaN (so not >= 0)"


def test_a_shape_mismatch_that_only_warns_says_it_warned():
    # Under filterwarnings=error the warning would surface as "raised UserWarning".
    with pytest.raises(ContractViolation) as info:
        check_shape_mismatch(
            _target(_WarnsAndBroadcasts),
            REMAINDER,
            term="target_loss",
            case="target_column_vs_vector",
        )
    violation = info.value
    assert violation.rule == "C-SHAPE-1"
    assert "with only a warning instead of raising ValueError" in violation.headline
    assert "raised UserWarning" not in violation.headline
    assert violation.details["warned"].startswith("UserWarning: ")
    assert "returned" in violation.details


def test_the_batch_as_drawn_describes_what_its_padding_holds():
    with pytest.raises(ContractViolation) as info:
        check_mask_values(_target(_RejectsAnyNan), NAN_PADDING, term="count_loss")
    headline = info.value.headline
    assert "(no garbage)" not in headline
    padded = int(NAN_PADDING.padded["count_prediction"].sum())
    assert f"outputs['count_prediction']: {padded} padded, all nan" in headline


def test_empty_check_names_the_tensor_of_its_own_term():
    # A count-only gradient bug is not the base_loss row's finding...
    check_empty_terms(_target(_NanCountGradient), REMAINDER, term="base_loss")
    # ...but the count and total rows name count_prediction.
    for term in ("count_loss", "total_loss"):
        with pytest.raises(ContractViolation, match=r"outputs\['count_prediction'\]") as info:
            check_empty_terms(_target(_NanCountGradient), REMAINDER, term=term)
        assert info.value.term == term


def test_batch_description_shows_target_values():
    text = REMAINDER.describe()
    valid = REMAINDER.targets["mask"].bool()
    counts = [float(v) for v in REMAINDER.targets["counts"][valid].reshape(-1).tolist()]
    assert f"targets['counts']: (3, 3, 1) float32, valid values {counts}" in text
    assert "targets['nucleotides']: (3, 3, 4) int64, valid values in [0, " in text
    assert "targets['target']: (3, 2) float32, valid values [" in text
    classes = DUPLICATES.describe()
    assert "targets['target']: (4,) int64, valid values [0, 1, 2, 0]" in classes
