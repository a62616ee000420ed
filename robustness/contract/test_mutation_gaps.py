"""Contract gaps found by ``python -m robustness mutate`` on aam, closed here.

Each test below kills surviving mutants of aam's own code that the rest of the suite let
through (see docs/mutation.md, "Survivors"); each was seen failing on its mutant first. They
check rules the contract already states, on inputs the other tests never drew. Rule-marked
like the rest of the suite, so the gate reports and selects them by rule id.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustness.contract._batches import row_batches
from robustness.contract.test_loss_rules import OVERFLOWING_SUM, _full_batch
from robustness.errors import ContractViolation, HarnessUsageError, ReplaySpec
from robustness.process_group import job_module
from robustness.properties._gradients import check_reference_gradients
from robustness.properties._losses import (
    _HEAD_OF,
    _Case,
    _compare,
    _expect_value_error,
    _names,
    check_pairwise_distances,
    check_reference_values,
)
from robustness.properties._regress import _only_head
from robustness.references import HUBER_DELTA
from robustness.strategies import MultiTaskBatch, multitask_batches
from robustness.target import LossTarget, MetricsTarget
from robustness.tolerances import gradient_tolerance, tolerance

# Fills for padded truths: what a data loader leaves in padding (NaN, inf, huge values).
_FLOAT_FILLS = (("NaN", math.nan), ("+inf", math.inf), ("-inf", -math.inf), ("1e30", 1e30))


def _terms(loss_target: LossTarget, batch: MultiTaskBatch) -> dict[str, torch.Tensor]:
    loss = loss_target.make(**batch.loss_kwargs)
    terms: dict[str, torch.Tensor] = loss(
        batch.outputs,
        batch.targets,
        is_classifier=batch.is_classifier,
        encoder_type=batch.encoder_type,
    )
    return terms


def _with_truth_garbage(batch: MultiTaskBatch, fill: float) -> MultiTaskBatch:
    """``batch`` with ``fill`` in the truths at padded positions (counts, base diagonal)."""
    targets = dict(batch.targets)
    if "counts" in targets and "mask" in targets:
        padded = (targets["mask"] == 0)[..., None]
        targets["counts"] = torch.where(padded, fill, targets["counts"])
    base = targets.get("base_target")
    if base is not None and batch.encoder_type == "unifrac" and base.ndim == 2:
        eye = torch.eye(base.shape[0], dtype=torch.bool, device=base.device)
        targets["base_target"] = torch.where(eye, fill, base)
    return MultiTaskBatch(
        outputs=batch.outputs,
        targets=targets,
        padded=batch.padded,
        is_classifier=batch.is_classifier,
        encoder_type=batch.encoder_type,
        loss_kwargs=batch.loss_kwargs,
        kind=batch.kind,
    )


# --------------------------------------------------------------------------- C-MASK-1 (truths)


@pytest.mark.rule("C-MASK-1")
@pytest.mark.parametrize("term", ["count_loss", "base_loss", "total_loss"])
@given(batch=row_batches())
def test_garbage_in_padded_truths_never_changes_a_value(loss_target, contract_device, term, batch):
    """C-MASK-1 says *values* at padded positions never matter; the suite filled only outputs.

    Kills ``selection-to-multiplication`` / ``guard-removed`` on the truth's ``where`` in
    count_loss and base_loss (``t = true * valid``: NaN * 0 = NaN).
    """
    if term != "total_loss" and term.removesuffix("_loss") not in batch.terms:
        return
    # Per-term isolation: a per-term row computes only its own head (a bug in another term
    # must not fail this row); total_loss keeps every head.
    batch = _only_head(batch, term).to(contract_device)
    clean = _terms(loss_target, batch)[term]
    for name, fill in _FLOAT_FILLS:
        dirty = _terms(loss_target, _with_truth_garbage(batch, fill))[term]
        if not torch.equal(clean, dirty):
            raise ContractViolation(
                "C-MASK-1",
                term,
                f"{term} changed when padded truths (counts at padded ASVs, the unifrac "
                f"target's diagonal) held {name}",
                details={
                    "clean value": clean.item(),
                    "with garbage": dirty.item(),
                    "dtype": str(batch.dtype),
                    "tolerance": "none: bit-identical (torch.equal) required",
                },
            )


# --------------------------------------------------------------------------- C-INPUT-1 (types)


_Build = Callable[[MultiTaskBatch], MultiTaskBatch]


def _integer(t: torch.Tensor) -> torch.Tensor:
    return t.detach().round().clamp(-100, 100).to(torch.int64)


def _listed(t: torch.Tensor) -> object:
    return t.detach().tolist()


def _bad_output(key: str, bad: Callable[[torch.Tensor], object]) -> _Build:
    def build(batch: MultiTaskBatch) -> MultiTaskBatch:
        # Deliberately not a tensor (a list) or not floating: the input under test.
        outputs: dict[str, Any] = {**batch.outputs, key: bad(batch.outputs[key])}
        return dataclasses.replace(batch, outputs=outputs)

    return build


def _bad_target(key: str, dtype: torch.dtype) -> _Build:
    def build(batch: MultiTaskBatch) -> MultiTaskBatch:
        return dataclasses.replace(
            batch, targets={**batch.targets, key: batch.targets[key].to(dtype)}
        )

    return build


def _kwarg(name: str, value: object) -> _Build:
    def build(batch: MultiTaskBatch) -> MultiTaskBatch:
        return dataclasses.replace(batch, loss_kwargs={**batch.loss_kwargs, name: value})

    return build


def _no_vocabulary(batch: MultiTaskBatch) -> MultiTaskBatch:
    logits = batch.outputs["nuc_predictions"].detach()[..., :0]
    return dataclasses.replace(batch, outputs={**batch.outputs, "nuc_predictions": logits})


def _two_count_columns(batch: MultiTaskBatch) -> MultiTaskBatch:
    outputs, targets = dict(batch.outputs), dict(batch.targets)
    outputs["count_prediction"] = outputs["count_prediction"].detach().repeat(1, 1, 2)
    targets["counts"] = targets["counts"].repeat(1, 1, 2)
    return dataclasses.replace(batch, outputs=outputs, targets=targets)


@dataclass(frozen=True)
class _GapCase:
    """One bad input: the term whose error names it, how to build it, what it must name."""

    rule: str
    term: str
    needs: str  # the output or target key the batch must have
    build: _Build
    names: tuple[str, ...]
    description: str
    expected: tuple[type[Exception], ...] = (ValueError,)
    grad: bool = True
    head: str = ""  # the term whose head the batch keeps ("": ``term``'s)


_PREDICTIONS = {
    "target_prediction": "target_loss",
    "count_prediction": "count_loss",
    "base_prediction": "base_loss",
    "nuc_predictions": "nuc_loss",
}
_TYPES = (TypeError, ValueError)

#: Bad inputs no other contract test drew; each kills a ``raise-removed`` mutant of aam.
GAP_CASES: dict[str, _GapCase] = {
    **{
        f"{key}-integer-dtype": _GapCase(
            "C-INPUT-1",
            term,
            key,
            _bad_output(key, _integer),
            (term,),
            f"{key} as an int64 tensor",
            _TYPES,
            grad=False,
        )
        for key, term in _PREDICTIONS.items()
    },
    **{
        f"{key}-python-list": _GapCase(
            "C-INPUT-1",
            term,
            key,
            _bad_output(key, _listed),
            (term,),
            f"{key} as a Python list",
            _TYPES,
            grad=False,
        )
        for key, term in _PREDICTIONS.items()
    },
    "nucleotides-as-float": _GapCase(
        "C-INPUT-1",
        "nuc_loss",
        "nucleotides",
        _bad_target("nucleotides", torch.float32),
        ("nuc_loss",),
        "float32 nucleotide ids",
    ),
    "class-ids-as-float": _GapCase(
        "C-INPUT-1",
        "target_loss",
        "target",
        _bad_target("target", torch.float32),
        ("target_loss",),
        "float32 class ids",
    ),
    "counts-as-complex": _GapCase(
        "C-INPUT-1",
        "count_loss",
        "counts",
        _bad_target("counts", torch.complex64),
        ("count_loss",),
        "complex64 counts",
    ),
    "base-target-as-complex": _GapCase(
        "C-INPUT-1",
        "base_loss",
        "base_target",
        _bad_target("base_target", torch.complex64),
        ("base_loss",),
        "a complex64 base target",
    ),
    "unknown-target-loss-type": _GapCase(
        "C-INPUT-1",
        "target_loss",
        "target_prediction",
        _kwarg("target_loss_type", "hinge"),
        ("target_loss_type",),
        "target_loss_type='hinge'",
    ),
    "unknown-encoder-type": _GapCase(
        "C-INPUT-1",
        "base_loss",
        "base_target",
        lambda b: dataclasses.replace(b, encoder_type="bogus"),
        ("encoder_type",),
        "encoder_type='bogus'",
    ),
    "targets-without-counts": _GapCase(
        "C-INPUT-1",
        "count_loss",
        "counts",
        lambda b: dataclasses.replace(
            b, targets={k: v for k, v in b.targets.items() if k != "counts"}
        ),
        ("count_loss",),
        "count_prediction given but targets without 'counts'",
    ),
    "count-prediction-two-columns": _GapCase(
        "C-SHAPE-1",
        "count_loss",
        "count_prediction",
        _two_count_columns,
        ("count_loss",),
        "a [B, A, 2] count prediction (and counts) against a [B, A] mask",
    ),
    "class-log-probabilities-without-classes": _GapCase(
        "C-SHAPE-1",
        "target_loss",
        "target_prediction",
        _bad_output("target_prediction", lambda t: t.detach()[:, :0]),
        ("target_loss",),
        "classification target_prediction [B, 0] (no classes)",
    ),
    "nuc-predictions-without-vocabulary": _GapCase(
        "C-SHAPE-1",
        "nuc_loss",
        "nuc_predictions",
        _no_vocabulary,
        ("nuc_loss",),
        "nuc_predictions [B, A, L, 0] (no vocabulary)",
    ),
}

# class_weights fail at construction whatever the batch: the batch has no target head, so
# a loss that accepted them is not stopped later by the check of their length against K.
GAP_CASES.update(
    {
        f"class-weights-{name}": _GapCase(
            "C-INPUT-1",
            "total_loss",
            "count_prediction",
            _kwarg("class_weights", value),
            ("class_weights",),
            f"class_weights {name}",
            head="count_loss",
        )
        for name, value in {
            "not-numbers": "heavy",
            "bool": torch.tensor([True, False]),
            "complex": torch.tensor([1.0 + 1j, 2.0]),
            "two-dimensional": torch.ones(2, 3),
            "empty": torch.ones(0),
        }.items()
    }
)


def check_gap_inputs(loss: LossTarget, batch: MultiTaskBatch, *, term: str, case: str) -> None:
    """C-INPUT-1 / C-SHAPE-1: one bad input of :data:`GAP_CASES` raises an error naming it.

    A non-floating prediction (an int64 tensor, a Python list) may raise ``TypeError`` or
    ``ValueError``; every other case ``ValueError``. The message must name the term (or the
    constructor argument).

    Raises:
        ContractViolation: on a silent result, another exception, or an unhelpful message.
        HarnessUsageError: on an unknown case, or a batch without the case's head.
    """
    if case not in GAP_CASES:
        raise HarnessUsageError(f"case must be one of {', '.join(GAP_CASES)}, got case={case!r}")
    spec = GAP_CASES[case]
    if term != spec.term:
        raise HarnessUsageError(f"case {case!r} is for term={spec.term!r}, got term={term!r}")
    if spec.needs not in batch.outputs and spec.needs not in batch.targets:
        raise HarnessUsageError(f"case {case!r} needs a batch with {spec.needs!r}")
    ctx = _Case(spec.rule, term, check_gap_inputs, batch, {"case": case})
    _expect_value_error(
        ctx,
        loss,
        spec.build(batch),
        {"invalid input": spec.description},
        lambda message: ", ".join(name for name in spec.names if not _names(message, name)),
        what=spec.description,
        silently="accepted silently",
        expected=spec.expected,
        grad=spec.grad,
    )


def _case_batches(rule: str, **options: Any) -> dict[str, st.SearchStrategy[MultiTaskBatch]]:
    """Each ``rule`` case's batches: ``multitask_batches(**options)`` drawing only its head.

    A case judges the batch restricted to one head (``_only_head``); drawing the other heads'
    sizes and options but not their tensors (``values_for``) gives that restricted batch the
    same distribution, without drawing what would be thrown away (most of an example's cost).
    """
    return {
        case: multitask_batches(values_for=(_HEAD_OF[spec.head or spec.term],), **options)
        for case, spec in GAP_CASES.items()
        if spec.rule == rule
    }


_INPUT_BATCHES = _case_batches("C-INPUT-1")


@pytest.mark.rule("C-INPUT-1")
@pytest.mark.parametrize("case", list(_INPUT_BATCHES))
@given(data=st.data())
def test_bad_input_types_and_options_raise_naming_the_term(
    loss_target, contract_device, case, data
):
    """Bad input gets a clear error: non-float predictions, float ids, complex truths, an
    unknown ``target_loss_type`` or ``encoder_type``, unusable ``class_weights``, a head
    whose truth is missing.

    Kills ``raise-removed`` in aam's ``_require_tensor``, ``_require_floating``,
    ``_require_integer``, ``_require_real``, ``_validate_class_weights``,
    ``_validate_encoder_type``, the ``target_loss_type`` check of ``MultiTaskLoss.__init__``
    and the missing-target check of ``MultiTaskLoss.forward``.
    """
    batch = data.draw(_INPUT_BATCHES[case], label="batch")
    spec = GAP_CASES[case]
    if spec.needs not in batch.outputs and spec.needs not in batch.targets:
        return
    if spec.needs == "target" and not batch.is_classifier:
        return  # regression truths are floats: "class ids as float" needs class ids
    head = _only_head(batch, spec.head or spec.term).to(contract_device)  # per-term isolation
    check_gap_inputs(loss_target, head, term=spec.term, case=case)


_SHAPE_BATCHES = _case_batches("C-SHAPE-1", terms=("count", "nuc", "target"), classifier=True)


@pytest.mark.rule("C-SHAPE-1")
@pytest.mark.parametrize("case", list(_SHAPE_BATCHES))
@given(data=st.data())
def test_bad_prediction_shapes_raise_naming_the_term(loss_target, contract_device, case, data):
    """Shapes only one check stands against raise a ValueError naming the term.

    ``[B, A, 2]`` count predictions (and counts) still match a ``[B, A]`` mask in
    ``shape[:-1]``, so only the ``[B, A, 1]`` check stops a silently averaged second column;
    nuc logits with ``V = 0`` match the ids in ``shape[:-1]`` too, and ``[B, 0]`` class
    log-probabilities match ``B`` ids. Kills ``raise-removed`` in aam's ``_count_inputs``,
    ``compute_nucleotide_loss`` and ``_classification_loss``.
    """
    batch = data.draw(_SHAPE_BATCHES[case], label="batch")
    spec = GAP_CASES[case]
    if spec.needs not in batch.outputs:
        return
    head = _only_head(batch, spec.term).to(contract_device)  # per-term isolation
    check_gap_inputs(loss_target, head, term=spec.term, case=case)


# --------------------------------------------------------------------------- C-INPUT-1 (uint8)


@pytest.mark.rule("C-INPUT-1")
def test_uint8_nucleotide_ids_with_a_large_vocabulary_are_valid_including_id_0(
    loss_target, contract_device
):
    """Ids in ``[0, V)`` are valid whatever their integer dtype, also when V > 255 > uint8.

    The range check has a branch for ids whose dtype cannot hold V; flipping ``ids < 0`` to
    ``ids <= 0`` there rejects id 0 and no drawn input reached it. Same value as int64 ids.
    """
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 1, 3, 300, generator=gen).to(contract_device)
    ids = torch.tensor([[[0, 7, 255]]], dtype=torch.uint8, device=contract_device)
    mask = torch.ones(1, 1, 3, dtype=torch.bool, device=contract_device)
    loss = loss_target.make()
    try:
        small = loss.compute_nucleotide_loss(logits, ids, mask)
    except Exception as exc:
        raise ContractViolation(
            "C-INPUT-1",
            "nuc_loss",
            "valid uint8 ids (0, 7, 255) with V = 300 were rejected",
            details={"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    wide = loss.compute_nucleotide_loss(logits, ids.long(), mask)
    if not torch.equal(small, wide):
        raise ContractViolation(
            "C-INPUT-1",
            "nuc_loss",
            "uint8 ids give another value than the same int64 ids",
            details={"uint8": small.item(), "int64": wide.item()},
        )
    # Class ids take the same branch (the nucleotide ids are range-checked by clamping now).
    scores = torch.log_softmax(logits[0, 0], dim=-1)  # [3, 300]
    targets = {"target": ids[0, 0]}
    try:
        small = loss({"target_prediction": scores}, targets, is_classifier=True)["target_loss"]
    except Exception as exc:
        raise ContractViolation(
            "C-INPUT-1",
            "target_loss",
            "valid uint8 class ids (0, 7, 255) with K = 300 were rejected",
            details={"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    wide = loss({"target_prediction": scores}, {"target": ids[0, 0].long()}, is_classifier=True)
    if not torch.equal(small, wide["target_loss"]):
        raise ContractViolation(
            "C-INPUT-1",
            "target_loss",
            "uint8 class ids give another value than the same int64 ids",
            details={"uint8": small.item(), "int64": wide["target_loss"].item()},
        )


# --------------------------------------------------------------------------- C-REF-1 (float masks)

#: Valid entries of a float mask, by turns: any non-zero value marks a valid position.
_SIGNED_MASK_VALUES = (-1.0, 2.0, 0.5)


def _signed_float_masks(batch: MultiTaskBatch) -> MultiTaskBatch:
    """``batch`` with float32 masks holding -1.0, 2.0 and 0.5 by turns where it is valid."""
    targets = dict(batch.targets)
    for key in ("mask", "nuc_mask"):
        mask = targets.get(key)
        if mask is None:
            continue
        turns = torch.tensor(_SIGNED_MASK_VALUES, device=mask.device)
        values = turns[torch.arange(mask.numel(), device=mask.device) % len(turns)]
        targets[key] = torch.where(mask != 0, values.reshape(mask.shape), 0.0)
    return dataclasses.replace(batch, targets=targets)


@pytest.mark.rule("C-REF-1")
@pytest.mark.parametrize("term", ["count_loss", "nuc_loss"])
@given(batch=row_batches())
def test_float_masks_are_valid_wherever_non_zero_negative_entries_included(
    loss_target, contract_device, term, batch
):
    """A position is valid where ``mask != 0``: a float mask's -1.0 marks a valid position.

    The drawn masks hold only 0 and 1, so a loss that reads validity as ``mask > 0`` passed
    every other rule. Kills ``boundary-flipped`` (``mask != 0`` -> ``mask > 0``) in aam's
    ``_count_inputs`` and in ``compute_nucleotide_loss``.
    """
    if term.removesuffix("_loss") not in batch.terms:
        return
    batch = _only_head(_signed_float_masks(batch), term).to(contract_device)
    check_reference_values(loss_target, batch, term=term)


# --------------------------------------------------------------------------- C-REF-1 (weights)


def _every_class_weighted_3_1_1(batch: MultiTaskBatch) -> MultiTaskBatch:
    """``batch`` with float32 class weights ``(3, 1, ..., 1)`` and ids cycling every class.

    ``w / max(w)`` is ``1/3``, inexact in float32: normalised in float32 the weights carry a
    float32 rounding into a float64 loss.
    """
    k = int(batch.outputs["target_prediction"].shape[1])
    weights = torch.ones(k)
    weights[0] = 3.0
    ids = torch.arange(batch.batch_size, device=batch.device) % k
    return dataclasses.replace(
        batch,
        targets={**batch.targets, "target": ids},
        loss_kwargs={**batch.loss_kwargs, "class_weights": weights},
    )


@pytest.mark.rule("C-REF-1")
@given(
    batch=multitask_batches(
        terms=("target",), classifier=True, dtype=torch.float64, min_batch=2, class_weights=True
    )
)
def test_float32_class_weights_keep_a_float64_loss_exact(loss_target, contract_device, batch):
    """Class weights (a float32 buffer) are normalised in the loss's float64, not in float32.

    Kills ``upcast-removed`` on the weights' promotion in aam's ``_classification_loss``
    (the bug C-REF-1 once found with weights (3, 1, 1); no dev-profile draw had them).
    """
    if batch.outputs["target_prediction"].shape[1] < 2:
        return
    batch = _every_class_weighted_3_1_1(batch).to(contract_device)
    check_reference_values(loss_target, batch, term="target_loss")


# --------------------------------------------------------------------------- C-GRAD-1 (huber)

#: Errors ``p - t`` in units of ``HUBER_DELTA``, by turns: both sides of both kinks.
_HUBER_ERRORS = (-2.0, -0.75, -0.25, 0.5, 1.5)


@pytest.mark.rule("C-GRAD-1")
@given(
    batch=multitask_batches(
        terms=("target",), classifier=False, dtype=st.sampled_from([torch.float32, torch.float64])
    )
)
def test_huber_gradient_is_the_clamped_error_over_n(loss_target, contract_device, batch):
    """``d huber / d p = clamp(p - t, -delta, delta) / n``, in the quadratic regime too.

    C-GRAD-1's tolerance for huber is as wide as its linear-regime gradient (the kink), so a
    gradient halved inside ``delta`` passed it. Here the errors are placed away from the
    kinks and the gradient is judged at the rounding of ``p - t``. Kills ``detach-inserted``
    on ``quad * quad`` in aam's ``_huber``.
    """
    batch = batch.to(contract_device)
    true = batch.targets["target"]
    dtype = batch.outputs["target_prediction"].dtype
    turns = torch.tensor(_HUBER_ERRORS, dtype=torch.float64) * HUBER_DELTA
    errors = turns[torch.arange(true.numel()) % len(turns)].reshape(true.shape)
    pred = (true.double() + errors.to(true.device)).to(dtype).requires_grad_()
    loss = loss_target.make(**{**batch.loss_kwargs, "target_loss_type": "huber"})
    value = loss(
        {"target_prediction": pred},
        {"target": true},
        is_classifier=False,
        encoder_type=batch.encoder_type,
    )["target_loss"]
    (grad,) = torch.autograd.grad(value, pred)
    p, t = pred.detach().double(), true.double()
    n = max(pred.numel(), 1)
    want = (p - t).clamp(-HUBER_DELTA, HUBER_DELTA) / n
    # p - t and the clamp round at most a few eps of |p| + |t| + delta; /n is exact in 2**k
    # scaling up to one more rounding.
    allowed = 8 * torch.finfo(dtype).eps * (p.abs() + t.abs() + HUBER_DELTA) / n
    off = (grad.double() - want).abs() > allowed
    if bool(off.any()):
        first = tuple(int(i) for i in torch.nonzero(off)[0].tolist())
        raise ContractViolation(
            "C-GRAD-1",
            "target_loss",
            "the huber gradient is not clamp(p - t, -delta, delta) / n",
            details={
                "input": batch.describe(),
                "mismatched": f"{int(off.sum())} / {off.numel()}",
                "first": f"{first}: gradient {float(grad[first])}, expected {float(want[first])}",
                "tolerance": f"8 eps (|p| + |t| + delta) / n = {float(allowed[first]):.3g}",
            },
        )


# --------------------------------------------------------------------------- C-METRIC-INPUT-1


def _bad_metric_inputs(case: str, device: str) -> tuple[str, tuple[Any, ...], str, str]:
    """``(metric callable, its arguments with one bad value, the argument, what is bad)``."""
    real = torch.tensor([0.5, 1.5, 2.0], dtype=torch.float64, device=device)
    wide = torch.complex(real, torch.ones_like(real))
    ids = torch.tensor([0, 1, 1], device=device)
    mask = torch.ones(1, 3, dtype=torch.bool, device=device)
    scores = torch.stack([real, -real], dim=1)  # [B, K] = [3, 2]
    cases: dict[str, tuple[str, tuple[Any, ...], str, str]] = {
        "regression-complex": ("compute_regression_metrics", (wide, real), "y_pred", "complex"),
        "classification-complex": (
            "compute_classification_metrics",
            (torch.complex(scores, scores), ids),
            "y_pred",
            "complex",
        ),
        "count-complex": (
            "compute_count_metrics",
            (real.reshape(1, 3, 1), wide.reshape(1, 3, 1), mask),
            "count_true",
            "complex",
        ),
        "count-nan-prediction": (
            "compute_count_metrics",
            _nan_at_a_valid_asv(*_count_metric_inputs(device)),
            "count_pred",
            "NaN at a valid ASV with B = 2 != A = 3",
        ),
        "classification-num-classes-0": (
            # The streaming constructor: the one-shot function's later checks name
            # num_classes too, and would hide a missing check.
            "StreamingClassificationMetrics",
            (0,),
            "num_classes",
            "0",
        ),
        "classification-columns-not-num-classes": (
            "compute_classification_metrics",
            (scores, ids, 3),
            "num_classes",
            "3 for [B, 2] scores",
        ),
        "classification-fractional-ids": (
            "compute_classification_metrics",
            (scores, torch.tensor([0.0, 1.5, 1.0], device=device)),
            "y_true",
            "holding 1.5",
        ),
        "count-shapes-differ": (
            "compute_count_metrics",
            (real.reshape(1, 3, 1), real.reshape(1, 3, 1).repeat(1, 1, 2), mask),
            "count_true",
            "[1, 3, 2] against a [1, 3, 1] count_pred",
        ),
        "classification-2d-true": (
            "compute_classification_metrics",
            (scores, ids[:, None]),
            "y_true",
            "[B, 1]",
        ),
        "classification-no-class-columns": (
            "compute_classification_metrics",
            (scores[:, :0], ids),
            "y_pred",
            "[B, 0]",
        ),
        "regression-python-list": (
            "compute_regression_metrics",
            (real.tolist(), real),
            "y_pred",
            "Python list",
        ),
        "regression-merge-with-a-list": (
            "StreamingRegressionMetrics.merge",
            ([1.0],),
            "merge",
            "list as the other state of",
        ),
        "classification-3d-scores": (
            "compute_classification_metrics",
            (scores.unsqueeze(-1), ids),
            "y_pred",
            "[B, K, 1] (neither [B, K] nor [B])",
        ),
    }
    return cases[case]


_METRIC_INPUT_CASES = (
    "regression-complex",
    "classification-complex",
    "count-complex",
    "count-nan-prediction",
    "count-shapes-differ",
    "classification-3d-scores",
    "classification-num-classes-0",
    "classification-columns-not-num-classes",
    "classification-fractional-ids",
    "classification-2d-true",
    "classification-no-class-columns",
    "regression-python-list",
    "regression-merge-with-a-list",
)
_NOT_A_TENSOR = frozenset({"regression-python-list", "regression-merge-with-a-list"})


def _nan_at_a_valid_asv(
    pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pred = pred.clone()
    pred[1, 0, 0] = math.nan  # mask[1, 0] = 2.0: valid
    return pred, true, mask


def check_bad_metric_inputs(metrics: MetricsTarget, *, case: str, device: str) -> None:
    """C-METRIC-INPUT-1: a complex or wrongly shaped tensor raises ``ValueError`` naming it.

    Raises:
        ContractViolation: on a silent result or another exception.
        HarnessUsageError: on an unknown case.
    """
    if case not in _METRIC_INPUT_CASES:
        raise HarnessUsageError(
            f"case must be one of {', '.join(_METRIC_INPUT_CASES)}, got case={case!r}"
        )
    function, args, argument, what = _bad_metric_inputs(case, device)
    metric = case.partition("-")[0]
    replay = ReplaySpec.of(check_bad_metric_inputs, "metrics", case=case, device=device)

    def violation(headline: str, error: BaseException | None) -> ContractViolation:
        details = {"input": f"{argument} {what}, on {device}"}
        if error is not None:
            details["exception"] = f"{type(error).__name__}: {error}"
        return ContractViolation(
            "C-METRIC-INPUT-1", metric, headline, details=details, replay=replay
        )

    # A value that is not a tensor (or not a state) at all may be a TypeError, as in Python.
    expected = (TypeError, ValueError) if case in _NOT_A_TENSOR else (ValueError,)
    wanted = " or ".join(e.__name__ for e in expected)
    try:
        if function.endswith(".merge"):
            getattr(metrics, function.removesuffix(".merge"))().merge(*args)
        else:
            getattr(metrics, function)(*args)
    except expected as exc:
        if _names(str(exc), argument):
            return
        raise violation(f"the {wanted} for a {what} {argument} does not name it", exc) from exc
    except Exception as exc:
        raise violation(
            f"a {what} {argument} raised {type(exc).__name__}, not {wanted}", exc
        ) from exc
    raise violation(f"a {what} {argument} was accepted silently", None)


@pytest.mark.rule("C-METRIC-INPUT-1")
@pytest.mark.parametrize("case", _METRIC_INPUT_CASES)
def test_complex_or_misshaped_metric_inputs_raise_naming_the_argument(
    metrics_target, contract_device, case
):
    """Metrics take real tensors of the documented shapes; anything else is a clear error.

    Kills ``raise-removed`` in aam's metrics ``_tensor`` (complex) and the ``y_pred`` rank
    check of ``StreamingClassificationMetrics`` (no other test gave either input), and
    ``keepdim-or-squeeze`` on the mask in the NaN error path of the count metrics (a
    ``[B, A, 1]`` & ``[B, A]`` broadcast that fails once ``B != A``).
    """
    check_bad_metric_inputs(metrics_target, case=case, device=contract_device)


# --------------------------------------------------------------------------- C-METRIC-EDGE-1


@pytest.mark.rule("C-METRIC-EDGE-1")
def test_targets_whose_variance_underflows_are_constant_to_r2(metrics_target, contract_device):
    """Targets ``0`` and the smallest subnormal differ, but their variance underflows to 0:
    R² is then the constant-target case (1.0 for perfect predictions), never 0/0.

    Kills ``boundary-flipped`` (``m2 > 0`` -> ``m2 >= 0``) in aam's
    ``StreamingRegressionMetrics.compute``, which then divides by a zero ``m2``.
    """
    tiny = float(torch.finfo(torch.float64).smallest_normal) * 2.0**-52  # 5e-324
    y = torch.tensor([0.0, tiny], dtype=torch.float64, device=contract_device)
    try:
        result = metrics_target.compute_regression_metrics(y, y.clone())
    except Exception as exc:
        raise ContractViolation(
            "C-METRIC-EDGE-1",
            "regression",
            "targets (0, 5e-324) with perfect predictions raised",
            details={"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    if result["r2"] != 1.0:
        raise ContractViolation(
            "C-METRIC-EDGE-1",
            "regression",
            "targets (0, 5e-324), whose variance underflows, with perfect predictions: "
            "R² is not 1.0",
            details={"r2": result["r2"]},
        )


# --------------------------------------------------------------------------- C-GRAD-1 (nuc, 2nd)


# grad_outputs imports sympy: on the worker that already does (see test_weight_safety.py).
@pytest.mark.xdist_group("torch-lazy-imports")
@pytest.mark.rule("C-GRAD-1")
@given(
    batch=multitask_batches(terms=("nuc",), dtype=st.sampled_from([torch.float32, torch.float64]))
)
def test_nuc_gradient_with_create_graph_is_the_same_and_differentiable(
    loss_target, contract_device, batch
):
    """With ``create_graph=True`` (gradient penalties, ``jvp`` by double backward) the nuc
    gradient is the same gradient, and it is linear in the incoming gradient ``v``.

    aam's masked cross-entropy has its own backward with a separate differentiable branch
    that no other test ran. Kills ``keepdim-or-squeeze`` (the row mask not unsqueezed) and
    ``detach-inserted`` on the incoming gradient and ``guard-removed`` on the padded rows'
    ``where`` in ``_MaskedCrossEntropy.backward``.
    """
    # NaN in the padded logits: the differentiable branch must select them away too.
    batch = batch.with_garbage(math.nan).to(contract_device)
    logits = batch.outputs["nuc_predictions"].detach().requires_grad_()
    ids, mask = batch.targets["nucleotides"], batch.targets["nuc_mask"]
    loss = loss_target.make(**batch.loss_kwargs)
    (plain,) = torch.autograd.grad(loss.compute_nucleotide_loss(logits, ids, mask), logits)
    value = loss.compute_nucleotide_loss(logits, ids, mask)
    v = torch.ones_like(value, requires_grad=True)
    details: dict[str, object] = {"input": batch.describe()}
    try:
        (graphed,) = torch.autograd.grad(value, logits, grad_outputs=v, create_graph=True)
        (dv,) = torch.autograd.grad(
            (graphed * plain).sum(), v, allow_unused=True, materialize_grads=True
        )
    except RuntimeError as exc:
        raise ContractViolation(
            "C-GRAD-1",
            "nuc_loss",
            "the nuc gradient with create_graph=True raised",
            details={**details, "exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    scale = float(plain.detach().abs().amax()) if plain.numel() else 0.0
    allowed = 16 * torch.finfo(plain.dtype).eps * scale
    off = float((graphed.detach() - plain).abs().amax()) if plain.numel() else 0.0
    # d/dv <v * grad, grad> = |grad|^2: zero where the double-backward graph lost v.
    want = float((plain.double() ** 2).sum())
    close = off <= allowed and abs(float(dv) - want) <= 16 * torch.finfo(plain.dtype).eps * want
    if not close:  # NaN compares False: a NaN gradient fails here
        raise ContractViolation(
            "C-GRAD-1",
            "nuc_loss",
            "the nuc gradient with create_graph=True differs from the plain gradient, or is "
            "not linear in the incoming gradient",
            details={
                **details,
                "largest difference": f"{off:.3g} (allowed {allowed:.3g})",
                "d/dv <v grad, grad>": f"{float(dv):.9g}, expected |grad|^2 = {want:.9g}",
            },
        )


# --------------------------------------------------------------------------- C-REF-1 (int counts)

#: The first integer float32 cannot hold: 2**24 + 1 rounds to 2**24.
_BEYOND_FLOAT32 = 2**24 + 1


def _large_integers(
    batch: MultiTaskBatch, pred_key: str, true_key: str, **loss_kwargs: object
) -> MultiTaskBatch:
    """``batch`` with the int64 truth ``true_key`` set to ``2**24 + 1 + i`` (float32 would
    round them) and the prediction ``pred_key`` near it, so the errors are small against the
    values; ``loss_kwargs`` are merged into the batch's."""
    true = batch.targets[true_key]
    steps = torch.arange(true.numel(), device=true.device).reshape(true.shape) % 7
    ids = (_BEYOND_FLOAT32 + steps).to(torch.int64)
    pred = batch.outputs[pred_key]
    near = (ids.double() + 0.25 * steps.double()).to(pred.dtype)
    return dataclasses.replace(
        batch,
        outputs={**batch.outputs, pred_key: near},
        targets={**batch.targets, true_key: ids},
        loss_kwargs={**batch.loss_kwargs, **loss_kwargs},
    )


@pytest.mark.rule("C-REF-1")
@given(batch=multitask_batches(terms=("count",), dtype=torch.float64))
def test_integer_counts_beyond_float32_keep_a_float64_loss_exact(
    loss_target, contract_device, batch
):
    """Integer counts are converted to the compute dtype (float64 here), not to float32.

    ``torch.where(valid, counts, 0.0)`` on int64 counts gives the default float32 and
    rounds ``2**24 + 1``. Kills ``upcast-removed`` on the truth in aam's
    ``compute_count_loss``.
    """
    batch = _large_integers(batch, "count_prediction", "counts").to(contract_device)
    check_reference_values(loss_target, batch, term="count_loss")


@pytest.mark.rule("C-REF-1")
@given(
    batch=multitask_batches(
        terms=("base",), dtype=torch.float64, encoder_type="unifrac", embeddings=False
    )
)
def test_integer_base_targets_beyond_float32_keep_a_float64_loss_exact(
    loss_target, contract_device, batch
):
    """As for counts: an int64 base target is converted to float64, not to float32.

    Kills ``upcast-removed`` on the truth in aam's ``_base_loss``.
    """
    batch = _large_integers(batch, "base_prediction", "base_target").to(contract_device)
    check_reference_values(loss_target, batch, term="base_loss")


# --------------------------------------------------------------------------- count metrics


def _count_metric_inputs(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, A, 1]`` predictions and counts with ``B = 2 != A = 3``, and a float mask."""
    pred = torch.tensor([[1.0, 2.0, 4.0], [0.5, 3.0, 9.0]], dtype=torch.float64, device=device)
    true = torch.tensor([[1.5, 2.0, 1.0], [0.0, 5.0, 7.0]], dtype=torch.float64, device=device)
    mask = torch.tensor([[1.0, -1.0, 0.0], [2.0, 0.0, -0.5]], device=device)
    return pred[..., None], true[..., None], mask


@pytest.mark.rule("C-METRIC-REF-1")
def test_count_metrics_take_any_non_zero_float_mask_entry_as_valid(metrics_target, contract_device):
    """Valid is ``mask != 0`` for the count metrics too: -1.0 and 2.0 mark valid ASVs.

    Kills ``boundary-flipped`` (``mask != 0`` -> ``mask > 0``) in aam's metrics
    ``_count_inputs``.
    """
    pred, true, mask = _count_metric_inputs(contract_device)
    signed = metrics_target.compute_count_metrics(pred, true, mask)
    plain = metrics_target.compute_count_metrics(pred, true, mask != 0)
    if signed != plain:
        raise ContractViolation(
            "C-METRIC-REF-1",
            "count",
            "count metrics with a float mask holding -1.0 / 2.0 / -0.5 at valid ASVs differ "
            "from the same mask as bool",
            details={"float mask": signed, "bool mask": plain, "mask": mask.tolist()},
        )


# --------------------------------------------------------------------------- C-SHAPE-1 (distances)

_BAD_EMBEDDINGS = {
    "one-dimensional": (3,),
    "no-features": (3, 0),
}


def check_bad_embeddings(loss: LossTarget, *, case: str, device: str) -> None:
    """C-SHAPE-1: ``pairwise_distances`` of embeddings that are not ``[B, D >= 1]`` raises
    ``ValueError`` naming the embeddings and their shape.

    Raises:
        ContractViolation: on a silent result or another exception.
        HarnessUsageError: on an unknown case.
    """
    if case not in _BAD_EMBEDDINGS:
        raise HarnessUsageError(
            f"case must be one of {', '.join(_BAD_EMBEDDINGS)}, got case={case!r}"
        )
    shape = _BAD_EMBEDDINGS[case]
    emb = torch.linspace(-1.0, 1.0, math.prod(shape), device=device).reshape(shape)
    replay = ReplaySpec.of(check_bad_embeddings, "loss", case=case, device=device)
    term = "compute_pairwise_distances"

    def violation(headline: str, error: BaseException | None) -> ContractViolation:
        details = {"embeddings": f"shape {shape}, float32, on {device}"}
        if error is not None:
            details["exception"] = f"{type(error).__name__}: {error}"
        return ContractViolation("C-SHAPE-1", term, headline, details=details, replay=replay)

    try:
        loss.pairwise_distances(emb)
    except ValueError as exc:
        if _names(str(exc), "embeddings") and str(shape) in str(exc):
            return
        raise violation(f"the ValueError for {shape} embeddings does not name them", exc) from exc
    except Exception as exc:
        raise violation(
            f"embeddings of shape {shape} raised {type(exc).__name__}, not ValueError", exc
        ) from exc
    raise violation(f"embeddings of shape {shape} were accepted silently", None)


@pytest.mark.rule("C-SHAPE-1")
@pytest.mark.parametrize("case", list(_BAD_EMBEDDINGS))
def test_embeddings_that_are_not_b_by_d_raise_naming_them(loss_target, contract_device, case):
    """Embeddings must be ``[B, D]`` with ``D >= 1``; a 1-D or featureless tensor is a clear
    error. Kills ``raise-removed`` in aam's ``compute_pairwise_distances``.
    """
    check_bad_embeddings(loss_target, case=case, device=contract_device)


@pytest.mark.rule("C-REF-1")
@given(batch=multitask_batches(terms=("target",), classifier=False, dtype=torch.float64))
def test_integer_regression_targets_beyond_float32_keep_a_float64_loss_exact(
    loss_target, contract_device, batch
):
    """As for counts: int64 regression targets are converted to float64 before the MAE.

    Kills ``upcast-removed`` on the truth in aam's ``compute_target_loss``.
    """
    # The MAE's halving ``true * 0.5`` would run in float32 on ints.
    batch = _large_integers(batch, "target_prediction", "target", target_loss_type="mae")
    batch = batch.to(contract_device)
    check_reference_values(loss_target, batch, term="target_loss")


# --------------------------------------------------------------------------- C-INPUT-1 (mappings)


def check_outputs_not_a_mapping(loss: LossTarget, *, which: str, device: str) -> None:
    """C-INPUT-1: ``outputs`` or ``targets`` given as a list of pairs raises ``TypeError`` or
    ``ValueError`` naming it (``forward`` takes mappings).

    Raises:
        ContractViolation: on a silent result or another exception.
    """
    pred = torch.zeros(1, 2, 1, device=device)
    parts: dict[str, Any] = {
        "outputs": {"count_prediction": pred},
        "targets": {"counts": pred.clone(), "mask": torch.ones(1, 2, device=device)},
    }
    parts[which] = list(parts[which].items())
    replay = ReplaySpec.of(check_outputs_not_a_mapping, "loss", which=which, device=device)

    def violation(headline: str, error: BaseException | None) -> ContractViolation:
        details = {which: "a list of (key, tensor) pairs"}
        if error is not None:
            details["exception"] = f"{type(error).__name__}: {error}"
        return ContractViolation(
            "C-INPUT-1", "total_loss", headline, details=details, replay=replay
        )

    try:
        loss.make()(parts["outputs"], parts["targets"])
    except (TypeError, ValueError) as exc:
        if _names(str(exc), which):
            return
        raise violation(f"the error for {which} as a list does not name it", exc) from exc
    except Exception as exc:
        raise violation(
            f"{which} as a list raised {type(exc).__name__}, not TypeError or ValueError", exc
        ) from exc
    raise violation(f"{which} as a list was accepted silently", None)


@pytest.mark.rule("C-INPUT-1")
@pytest.mark.parametrize("which", ["outputs", "targets"])
def test_outputs_and_targets_that_are_not_mappings_raise_naming_them(
    loss_target, contract_device, which
):
    """``forward`` takes mappings; a list of pairs is a clear error. Kills ``raise-removed``
    on the mapping check of aam's ``MultiTaskLoss.forward``.
    """
    check_outputs_not_a_mapping(loss_target, which=which, device=contract_device)


@pytest.mark.rule("C-STREAM-2")
def test_merge_leaves_the_other_state_unchanged(metrics_target, contract_device):
    """``a.merge(b)`` folds ``b`` into ``a`` and leaves ``b`` as it was (its docstring and any
    sync that merges one state into several rely on it).

    Kills ``inplace-on-input`` (``mean - s_mean`` -> ``mean.sub_(s_mean)``) in aam's
    ``StreamingRegressionMetrics._combine``, which merge calls with the other state's tensors.
    """
    f64 = {"dtype": torch.float64, "device": contract_device}
    a, b, untouched = (metrics_target.StreamingRegressionMetrics() for _ in range(3))
    a.update(torch.tensor([1.0, 2.0, 4.0], **f64), torch.tensor([1.5, 2.0, 3.0], **f64))
    for state in (b, untouched):
        state.update(torch.tensor([7.0, -1.0], **f64), torch.tensor([6.0, 0.5], **f64))
    a.merge(b)
    # compute() alone does not read every field (not the mean): feed both states once more,
    # so a changed field shows in what they report.
    for state in (b, untouched):
        state.update(torch.tensor([3.0, 9.0], **f64), torch.tensor([2.0, 4.0], **f64))
    if b.compute() != untouched.compute():
        raise ContractViolation(
            "C-STREAM-2",
            "regression",
            "merge changed the state merged in (seen after one more update of it)",
            details={
                "merged-in state": b.compute(),
                "same state, never merged": untouched.compute(),
            },
        )


# --------------------------------------------------------------------------- group revloss
# Survivors of the full run in aam's checks, mean-square retries, masked cross-entropy,
# classification and count terms (docs/mutation.md, issue 12).


def _overflowing_base_sum(batch: MultiTaskBatch) -> MultiTaskBatch:
    """``batch`` with unifrac base errors whose squares are ``finfo.max / 5`` at every pair.

    As ``OVERFLOWING_SUM`` for the count term: the mean of the squares is representable, the
    plain sum over more than 5 pairs is not, so the base term takes its pre-scaled retry.
    """
    size = batch.targets["base_target"].shape[0]
    gap = math.sqrt(float(torch.finfo(batch.dtype).max) / 5)
    off = ~torch.eye(size, dtype=torch.bool)
    outputs = {**batch.outputs, "base_prediction": torch.where(off, gap, 0.0)}
    targets = {**batch.targets, "base_target": torch.zeros(size, size)}
    return dataclasses.replace(batch, outputs=outputs, targets=targets)


#: Terms whose quick sum overflows while their mean does not: 6 valid ASVs, 12 pairs.
_OVERFLOWING_SUMS = {
    "count_loss": OVERFLOWING_SUM,
    "base_loss": _overflowing_base_sum(_full_batch(4, seed=7)),
}


@pytest.mark.rule("C-REF-1")
@pytest.mark.parametrize("term", list(_OVERFLOWING_SUMS))
def test_a_term_whose_quick_sum_overflows_keeps_its_reference_value(
    loss_target, contract_device, term
):
    """A mean of squares whose plain sum overflows is still the mean (C-FINITE-1 drew only
    its finiteness).

    Kills ``denominator-changed`` (``sum`` -> ``mean``) and ``constant-changed`` on the
    count in aam's ``_mean_square``, the pre-scaled retry such a term falls back to.
    """
    batch = _only_head(_OVERFLOWING_SUMS[term], term).to(contract_device)
    check_reference_values(loss_target, batch, term=term)


@pytest.mark.rule("C-GRAD-1")
@pytest.mark.parametrize("term", list(_OVERFLOWING_SUMS))
def test_a_term_whose_quick_sum_overflows_keeps_its_reference_gradient(
    loss_target, contract_device, term
):
    """The gradient of that mean is ``2 (p - t) / n``, through the retry too.

    Kills ``detach-inserted`` on ``diff * pre`` and on either side of ``scaled * scaled`` in
    aam's ``_mean_square`` (a zero or halved gradient).
    """
    batch = _only_head(_OVERFLOWING_SUMS[term], term).to(contract_device)
    check_reference_gradients(loss_target, batch, term=term)


def _class_weights_for_another_k(batch: MultiTaskBatch) -> MultiTaskBatch:
    classes = batch.outputs["target_prediction"].shape[1]
    weights = torch.ones(classes + 1)
    return dataclasses.replace(batch, loss_kwargs={**batch.loss_kwargs, "class_weights": weights})


GAP_CASES["class-weights-for-another-k"] = _GapCase(
    "C-SHAPE-1",
    "target_loss",
    "target_prediction",
    _class_weights_for_another_k,
    ("target_loss", "class_weights"),
    "K + 1 class weights for K classes",
)


@pytest.mark.rule("C-SHAPE-1")
@given(batch=multitask_batches(terms=("target",), classifier=True))
def test_class_weights_for_another_number_of_classes_raise_naming_them(
    loss_target, contract_device, batch
):
    """``K + 1`` class weights for ``K`` classes raise; they index fine, so nothing else
    stops a weight silently ignored (``K - 1`` would at least be an ``IndexError``).

    Kills ``raise-removed`` on the class-weights length check of aam's
    ``_classification_loss``.
    """
    head = _only_head(batch, "target_loss").to(contract_device)
    check_gap_inputs(loss_target, head, term="target_loss", case="class-weights-for-another-k")


def _softmax_hvp(logits: torch.Tensor, valid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``H u`` of the mean cross-entropy over the valid rows, in float64: per row
    ``(p * u - p * (p . u)) / n``, 0 at padded rows (the ids do not enter it)."""
    x = torch.where(valid[..., None], logits.double(), 0.0)
    p = torch.softmax(x, dim=-1)
    uu = u.double()
    rows = p * uu - p * (p * uu).sum(dim=-1, keepdim=True)
    n = max(int(valid.sum()), 1)
    return torch.where(valid[..., None], rows / n, 0.0)


def check_nuc_hessian_vector_product(
    loss: LossTarget, batch: MultiTaskBatch, *, term: str = "nuc_loss"
) -> None:
    """C-GRAD-1 for second derivatives: the nuc loss's double backward gives ``H u``.

    ``u`` is a fixed direction with entries of both signs in ``[-1, 1]``; the float64
    reference is :func:`_softmax_hvp`.

    Raises:
        ContractViolation: if double backward raises or an entry is off by more than a few
            roundings of ``2 / n``.
    """
    logits = batch.outputs["nuc_predictions"].detach().requires_grad_()
    ids, mask = batch.targets["nucleotides"], batch.targets["nuc_mask"]
    valid = (mask != 0).cpu()
    steps = torch.arange(logits.numel(), dtype=torch.float64).reshape(logits.shape)
    u = torch.cos(steps * 0.7).to(logits.dtype).to(logits.device)
    case = _Case("C-GRAD-1", term, check_nuc_hessian_vector_product, batch)
    try:
        value = loss.make(**batch.loss_kwargs).compute_nucleotide_loss(logits, ids, mask)
        (grad,) = torch.autograd.grad(value, logits, create_graph=True)
        (hvp,) = torch.autograd.grad(
            (grad * u).sum(), logits, allow_unused=True, materialize_grads=True
        )
    except RuntimeError as exc:
        raise case.violation(
            "the nuc loss's double backward raised",
            {"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    want = _softmax_hvp(logits.detach().cpu(), valid, u.cpu())
    n = max(int(valid.sum()), 1)
    # Each entry is p_i (u_i - p . u) / n with |u| <= 1: a few roundings of at most 2 / n.
    allowed = 16 * torch.finfo(logits.dtype).eps * 2 / n
    off = (hvp.detach().cpu().double() - want).abs()
    worst = float(off.amax()) if off.numel() else 0.0
    if not worst <= allowed:  # NaN compares False: a NaN entry fails here
        raise case.violation(
            "the nuc loss's Hessian-vector product (double backward) is not the softmax Hessian's",
            {
                "largest difference": f"{worst:.3g} (allowed {allowed:.3g})",
                "largest expected entry": f"{float(want.abs().amax()):.3g}",
            },
        )


@pytest.mark.rule("C-GRAD-1")
@given(
    batch=multitask_batches(terms=("nuc",), dtype=st.sampled_from([torch.float32, torch.float64]))
)
def test_nuc_hessian_vector_product_is_the_softmax_hessian(loss_target, contract_device, batch):
    """Double backward of the nuc loss gives ``H u`` with ``H = diag(p) - p p^T`` per valid
    row over ``n`` (gradient penalties and Newton steps differentiate the gradient again).

    The create-graph test above checks the gradient and its linearity in the incoming
    gradient only. Kills ``detach-inserted`` on ``probs`` in the ``create_graph`` branch of
    aam's ``_MaskedCrossEntropy.backward`` (the Hessian's softmax part lost).
    """
    # NaN in the padded logits: the second derivative must select them away too.
    check_nuc_hessian_vector_product(loss_target, batch.with_garbage(math.nan).to(contract_device))


# --------------------------------------------------------------------------- group revmetrics
# Survivors of aam/training/metrics.py (issue 12 review, group revmetrics): the count
# prediction's own shape check, and the num_classes checks of merge and sync_distributed.


def _raises_naming(call: Callable[[], object], name: str) -> str | None:
    """``None`` if ``call()`` raises ``ValueError`` naming ``name``, else what happened."""
    try:
        call()
    except ValueError as exc:
        return None if _names(str(exc), name) else f"ValueError not naming {name}: {exc}"
    except Exception as exc:
        return f"{type(exc).__name__}, not ValueError: {exc}"
    return "accepted silently"


def check_count_pred_with_two_columns(metrics: MetricsTarget, *, device: str) -> None:
    """C-METRIC-INPUT-1: a ``[B, A, 2]`` count_pred (with a ``[B, A, 2]`` count_true and a
    ``[B, A]`` mask, so every other shape check passes) raises ``ValueError`` naming it.

    Raises:
        ContractViolation: on a silent result (one column read, the other ignored), another
            exception, or a message that does not name count_pred.
    """
    f64 = torch.float64
    pred = torch.tensor([[[1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]], dtype=f64, device=device)
    true = torch.tensor([[[1.5, 0.0], [2.0, 1.0], [2.5, 9.0]]], dtype=f64, device=device)
    mask = torch.ones(1, 3, dtype=torch.bool, device=device)
    what = _raises_naming(lambda: metrics.compute_count_metrics(pred, true, mask), "count_pred")
    if what is not None:
        raise ContractViolation(
            "C-METRIC-INPUT-1",
            "count",
            f"a [1, 3, 2] count_pred (count metrics take [B, A, 1]): {what}",
            details={"input": f"count_pred and count_true [1, 3, 2], mask [1, 3], on {device}"},
            replay=ReplaySpec.of(check_count_pred_with_two_columns, "metrics", device=device),
        )


@pytest.mark.rule("C-METRIC-INPUT-1")
def test_count_pred_with_two_columns_raises_naming_it(metrics_target, contract_device):
    """Kills ``raise-removed`` on the ``[B, A, 1]`` check of aam's ``_count_inputs``
    (``ed1d22b405``): without it, count_true of the same shape and a ``[B, A]`` mask pass the
    other checks and the metrics silently read column 0 only.
    """
    check_count_pred_with_two_columns(metrics_target, device=contract_device)


def _classification_state(
    metrics: MetricsTarget, k: int | None, ids: list[int], device: str
) -> Any:
    """A ``StreamingClassificationMetrics(k)`` fed ``ids`` (predicted: the ids reversed)."""
    state = metrics.StreamingClassificationMetrics(k)
    t = torch.tensor(ids, device=device)
    state.update(t, t.flip(0))
    return state


#: Merge cases: (this state's num_classes, its ids), (the other state's), whether the check
#: asks both merge orders to raise (differently fixed K) or ``this.merge(other)`` only (the
#: other state saw more classes than this one's fixed K; the reverse merge is allowed).
_MERGE_CASES: dict[str, tuple[tuple[int | None, list[int]], tuple[int | None, list[int]], bool]] = {
    "differently-fixed": ((5, [4, 0, 1]), (3, [0, 2]), True),
    "more-classes-than-fixed": ((3, [0, 2, 1]), (None, [4, 1]), False),
}


def check_classification_merge_of_mismatched_states(
    metrics: MetricsTarget, *, case: str, device: str
) -> None:
    """C-STREAM-2: merging classification states whose class counts disagree raises
    ``ValueError`` naming num_classes, never a silent ``[K, K]`` matrix of another K.

    A state fixed to K = 3 fed the other's ids 3 and 4 raises (C-METRIC-INPUT-1), so merging
    them in must too; two states fixed to different K raise in either order (a merge that
    one order refuses, the other must not accept: merge is commutative).

    Raises:
        ContractViolation: on a silent merge, another exception, or an unhelpful message.
        HarnessUsageError: on an unknown case.
    """
    if case not in _MERGE_CASES:
        raise HarnessUsageError(f"case must be one of {', '.join(_MERGE_CASES)}, got {case!r}")
    (k_a, ids_a), (k_b, ids_b), both = _MERGE_CASES[case]

    def state(k: int | None, ids: list[int]) -> Any:
        return _classification_state(metrics, k, ids, device)

    orders = [("a.merge(b)", lambda: state(k_a, ids_a).merge(state(k_b, ids_b)))]
    if both:
        orders.append(("b.merge(a)", lambda: state(k_b, ids_b).merge(state(k_a, ids_a))))
    for label, merge in orders:
        what = _raises_naming(merge, "num_classes")
        if what is not None:
            raise ContractViolation(
                "C-STREAM-2",
                "classification",
                f"{label} of states a (num_classes={k_a}) and b (num_classes={k_b}): {what}",
                details={"a": f"ids {ids_a}", "b": f"ids {ids_b}", "device": device},
                replay=ReplaySpec.of(
                    check_classification_merge_of_mismatched_states,
                    "metrics",
                    case=case,
                    device=device,
                ),
            )


@pytest.mark.rule("C-STREAM-2")
@pytest.mark.parametrize("case", list(_MERGE_CASES))
def test_classification_merge_of_mismatched_states_raises(metrics_target, contract_device, case):
    """Kills ``raise-removed`` on both num_classes checks of aam's
    ``StreamingClassificationMetrics.merge`` (``7e6fe1ffe8``: K = 5 merging K = 3 then gives
    a 5 x 5 matrix while the reverse order raises; ``e53ae99451``: a K = 3 state then holds a
    5 x 5 matrix).
    """
    check_classification_merge_of_mismatched_states(
        metrics_target, case=case, device=contract_device
    )


#: Sync cases over 2 ranks: per rank (num_classes, ids); every rank must raise.
_SYNC_CASES: dict[str, tuple[tuple[int | None, list[int]], ...]] = {
    "differently-fixed": ((3, [0, 2, 1]), (5, [4, 0])),
    "more-classes-than-fixed": ((3, [0, 2, 1]), (None, [4, 1])),
}


job_module(__name__)  # _mismatched_sync_job: imported once by the process groups' forkserver


def _mismatched_sync_job(rank: int, world_size: int, payload: dict[str, Any]) -> str | None:
    """On one rank: feed its ids to a state of its num_classes, sync; the ValueError or None."""
    from robustness.properties._distributed import _rank_device
    from robustness.target import load_metrics_target

    metrics = load_metrics_target(payload["spec"])
    k, ids = payload["ranks"][rank]
    state = _classification_state(metrics, k, ids, _rank_device(payload["device"], rank))
    try:
        state.sync_distributed()
    except ValueError as exc:
        return str(exc)
    return None


def check_sync_of_mismatched_classification_states(
    metrics: MetricsTarget, *, case: str, device: str
) -> None:
    """C-DDP-1: ranks whose classification states disagree on K (fixed differently, or one
    inferring more classes than another's fixed num_classes) all raise ``ValueError`` naming
    num_classes in ``sync_distributed``: no rank ends with a ``[K, K]`` matrix of another K.

    Raises:
        ContractViolation: if a rank syncs silently, fails otherwise, or its message does not
            name num_classes.
        HarnessUsageError: on an unknown case.
    """
    from robustness.process_group import shared_pool
    from robustness.properties._distributed import _backend, _importable, _job_timeout

    if case not in _SYNC_CASES:
        raise HarnessUsageError(f"case must be one of {', '.join(_SYNC_CASES)}, got {case!r}")
    ranks = _SYNC_CASES[case]
    _importable(metrics)
    # Every rank's own updates are valid, so only the sync can raise. (Fed here too, in this
    # process: mutate selects a test whose code runs in child processes by what it runs here.)
    for k, ids in ranks:
        _classification_state(metrics, k, ids, device)
    payload = {"spec": metrics.spec, "ranks": ranks, "device": device}
    pool = shared_pool(len(ranks), _backend(device))
    outcomes = pool.run(_mismatched_sync_job, payload, timeout=_job_timeout())
    for outcome in outcomes:
        if not outcome.ok:
            what = f"failed otherwise: {outcome.error.splitlines()[0] if outcome.error else '-'}"
        elif outcome.value is None:
            what = "synced silently"
        elif not _names(outcome.value, "num_classes"):
            what = f"raised ValueError not naming num_classes: {outcome.value}"
        else:
            continue
        raise ContractViolation(
            "C-DDP-1",
            "classification",
            f"sync_distributed on ranks with (num_classes, ids) {list(ranks)}: rank "
            f"{outcome.rank} {what}",
            details={"device": device},
            replay=ReplaySpec.of(
                check_sync_of_mismatched_classification_states,
                "metrics",
                case=case,
                device=device,
            ),
        )


@pytest.mark.rule("C-DDP-1")
@pytest.mark.xdist_group("process-groups")
@pytest.mark.parametrize("case", list(_SYNC_CASES))
def test_sync_of_mismatched_classification_states_raises_on_every_rank(
    metrics_target, contract_device, case
):
    """Kills ``raise-removed`` on both num_classes checks of aam's
    ``StreamingClassificationMetrics.sync_distributed`` (``d257bfeba1``, ``781dddf75c``):
    without them every rank silently sums padded matrices into a K it was not built for.
    """
    from robustness.properties._distributed import distributed_skip_reason

    reason = distributed_skip_reason(contract_device, len(_SYNC_CASES[case]))
    if reason is not None:
        pytest.skip(reason)
    check_sync_of_mismatched_classification_states(
        metrics_target, case=case, device=contract_device
    )


# ------------------------------------------------- group revpair: the pairwise distances' forward


def _embedded(rows: list[list[float]]) -> MultiTaskBatch:
    """A float64 unifrac batch whose only output is the embeddings ``rows``."""
    emb = torch.tensor(rows, dtype=torch.float64)
    return MultiTaskBatch(
        outputs={"embeddings": emb},
        targets={"base_target": torch.zeros(emb.shape[0], emb.shape[0], dtype=torch.float64)},
        padded={"embeddings": torch.zeros(emb.shape, dtype=torch.bool)},
        encoder_type="unifrac",
    )


# Features a batch of 4 rows is zero-padded to, so that B²·D = 262,400 passes 2^18: aam takes
# the Gram form there (direct differences below). Zeros change no norm, distance or mean.
_WIDE_FEATURES = 16_400


def _widened(rows: list[list[float]], width: str) -> list[list[float]]:
    if width == "narrow":
        return rows
    return [row + [0.0] * (_WIDE_FEATURES - len(row)) for row in rows]


@pytest.mark.rule("C-DIST-1", term="base_loss")
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_distances_shorter_than_the_batch_spread_are_exact(loss_target, contract_device, width):
    """Two rows 0.6 apart on either side of the batch mean, in a batch spread over 2: a pair
    far apart against its rows' norms (a Gram-form pair) but shorter than the batch's
    largest centred component. Random draws spread rows too widely to hold one. ``wide``
    zero-pads the features so that aam computes them in its Gram form.

    Kills ``constant-changed`` (``squared.clamp_(min=0.0)`` -> ``min=1.0``) in the Gram form
    of aam's ``_pairwise_forward``: the distance became the batch's scale, 1.0.
    """
    rows = _widened([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.3], [0.0, -0.3]], width)
    check_pairwise_distances(loss_target, _embedded(rows).to(contract_device), term="base_loss")


@pytest.mark.rule("C-DIST-1", term="base_loss")
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_a_batch_of_identical_rows_has_zero_distances(loss_target, contract_device, width):
    """Every row the same (a collapsed encoder): every distance is 0 with a finite gradient.
    The rows' spread is then 0, and a form that divides by it must not make 0/0.

    Kills ``guard-removed`` on the scale's clamp in the Gram form of aam's
    ``_pairwise_forward`` (NaN distances from u = 0/0).
    """
    rows = _widened([[0.5, -2.0, 1.0]] * 4, width)
    check_pairwise_distances(loss_target, _embedded(rows).to(contract_device), term="base_loss")


# Rows 1e-6 apart (a pair the cpu Gram form recomputes from direct differences) beside a
# distant row (Gram pairs); the incoming gradient weights every pair differently.
_SECOND_ORDER_ROWS = {
    "near-duplicates": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0 + 1e-6], [0.0, 5.0, 1.0]],
    "distinct": [[1.0, 2.0, 3.0], [-2.0, 0.5, 3.5], [0.0, 5.0, 1.0]],
}


def _wide_second_order_rows() -> list[list[float]]:
    """26 rows of 400 features with a 1e-6 near-duplicate pair: a size past torch.cdist's
    switch to its matrix-product form, where aam takes the Gram form (direct differences
    below B²·D = 2^18)."""
    rows = torch.randn(26, 400, generator=torch.Generator().manual_seed(27), dtype=torch.float64)
    rows[1] = rows[0]
    rows[1, 3] += 1e-6
    return rows.tolist()


_SECOND_ORDER_ROWS["wide"] = _wide_second_order_rows()


def check_pairwise_second_derivatives(loss: LossTarget, *, case: str, device: str) -> None:
    """C-GRAD-1: the Hessian-vector product of ``sum_ij w_ij d_ij`` with respect to the
    embeddings (double backward through ``create_graph=True``) matches the float64 reference
    ``(I - n n^T) / d`` of each pair, differentiated by autograd on direct differences.

    Raises:
        ContractViolation: on an exception or a product outside the float64 tolerance.
        HarnessUsageError: on an unknown case.
    """
    if case not in _SECOND_ORDER_ROWS:
        raise HarnessUsageError(
            f"case must be one of {', '.join(_SECOND_ORDER_ROWS)}, got case={case!r}"
        )
    replay = ReplaySpec.of(check_pairwise_second_derivatives, "loss", case=case, device=device)
    f64 = torch.float64
    rows = torch.tensor(_SECOND_ORDER_ROWS[case], dtype=f64, device=device)
    size, dim = rows.shape
    weights = torch.arange(1.0, size * size + 1.0, dtype=f64, device=device).reshape(size, size)
    v = torch.linspace(-1.0, 1.0, size * dim, dtype=f64, device=device).reshape(size, dim)
    off = ~torch.eye(size, dtype=torch.bool, device=device)

    def reference(emb: torch.Tensor) -> torch.Tensor:
        diff = torch.where(off[..., None], emb[:, None, :] - emb[None, :, :], 1.0)
        return torch.where(off, diff.norm(dim=-1), 0.0)

    def hvp(distances: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        emb = rows.clone().requires_grad_()
        (grad,) = torch.autograd.grad((distances(emb) * weights).sum(), emb, create_graph=True)
        (second,) = torch.autograd.grad((grad * v).sum(), emb)
        return second

    shown = rows.tolist() if rows.numel() <= 16 else f"{size} x {dim} rows (seeded)"
    details = {"embeddings": f"{case}: {shown}, float64, on {device}"}
    try:
        got = hvp(loss.pairwise_distances)
    except RuntimeError as exc:
        raise ContractViolation(
            "C-GRAD-1",
            "base_loss",
            "double backward of the pairwise distances raised",
            details={**details, "exception": f"{type(exc).__name__}: {exc}"},
            replay=replay,
        ) from exc
    expected = hvp(reference)
    tol = tolerance(torch.float64, n=dim, scale=float(expected.abs().amax()))
    message = _compare(got, expected, tol)
    if message is not None:
        raise ContractViolation(
            "C-GRAD-1",
            "base_loss",
            "the second derivative of the pairwise distances (double backward) is wrong "
            "(a detached direction?)",
            details={**details, "comparison": message},
            replay=replay,
        )


@pytest.mark.rule("C-GRAD-1", term="base_loss")
@pytest.mark.parametrize("case", list(_SECOND_ORDER_ROWS))
def test_pairwise_distances_have_the_reference_second_derivative(
    loss_target, contract_device, case
):
    """Gradient penalties differentiate the distances' gradient again; aam's recomputed
    pairs get theirs from the direct form's unit directions, which no other test
    differentiated twice.

    Kills ``detach-inserted`` in aam's ``_direct_distances`` on ``left``, ``right``, ``diff``
    (in the ratio), either factor of ``ratio * ratio`` and ``ratio`` in the units.
    """
    check_pairwise_second_derivatives(loss_target, case=case, device=contract_device)


# ------------------------------------------------ revpair2: the base term, from embeddings too


def _base_from_embeddings(
    loss_target: LossTarget, emb: torch.Tensor, true: torch.Tensor
) -> torch.Tensor:
    loss = loss_target.make()
    terms = loss(
        {"embeddings": emb}, {"base_target": true}, is_classifier=False, encoder_type="unifrac"
    )
    base: torch.Tensor = terms["base_loss"]
    return base


def _diagonal_filled(true: torch.Tensor, fill: float) -> torch.Tensor:
    eye = torch.eye(true.shape[0], dtype=torch.bool, device=true.device)
    return torch.where(eye, fill, true)


@pytest.mark.rule("C-MASK-1", term="base_loss")
def test_garbage_in_the_base_target_diagonal_never_changes_an_overflowing_sum(
    loss_target, contract_device
):
    """The unifrac target's diagonal is padding also when the quick sum of squares overflows.

    Embeddings 0, h, -h with ``h**2 = finfo.max / 8``: the mean of the squared distances is
    representable, their sum is not, so the term is recomputed the pre-scaled way. Kills
    ``selection-to-multiplication`` / ``guard-removed`` on the diagonal's ``where`` in
    aam's ``_embeddings_base_loss`` retry (NaN * 0 = NaN; 1e30 at the diagonal counted).
    """
    h = math.sqrt(float(torch.finfo(torch.float32).max) / 8)
    emb = torch.tensor([[0.0], [h], [-h]], device=contract_device)
    clean = torch.zeros(3, 3, device=contract_device)
    want = _base_from_embeddings(loss_target, emb, clean)
    if not torch.isfinite(want):
        raise ContractViolation(
            "C-FINITE-1",
            "base_loss",
            "embeddings whose mean squared distance is representable gave a non-finite term",
            details={"base_loss": want.item(), "h": h},
        )
    for name, fill in _FLOAT_FILLS:
        got = _base_from_embeddings(loss_target, emb, _diagonal_filled(clean, fill))
        if not torch.equal(want, got):
            raise ContractViolation(
                "C-MASK-1",
                "base_loss",
                f"base_loss of embeddings whose quick sum overflows changed when the "
                f"target's diagonal held {name}",
                details={
                    "clean value": want.item(),
                    "with garbage": got.item(),
                    "tolerance": "none: bit-identical (torch.equal) required",
                },
            )


def _reference_base(emb: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """float64 ``mean((|e_i - e_j| - t_ij)**2)`` off the diagonal, from plain autograd ops."""
    size = emb.shape[0]
    off = ~torch.eye(size, dtype=torch.bool, device=emb.device)
    squared = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(dim=-1)
    distances = torch.where(off, squared, 1.0).sqrt()
    diff = torch.where(off, distances - true, 0.0)
    return (diff * diff).sum() / (size * (size - 1))


def _separated_embeddings(seed: int, size: int, dim: int, device: str) -> torch.Tensor:
    """``[size, dim]`` float64 rows, all distinct, the last one close to the first (a pair
    that a Gram form recomputes directly beside pairs it keeps)."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(size, dim, generator=gen, dtype=torch.float64)
    emb[-1] = emb[0] + 0.05 * torch.randn(dim, generator=gen, dtype=torch.float64)
    return emb.to(device)


# grad_outputs imports sympy: on the worker that already does (see test_weight_safety.py).
@pytest.mark.xdist_group("torch-lazy-imports")
@pytest.mark.rule("C-GRAD-1", term="base_loss")
@given(
    seed=st.integers(0, 2**16),
    size=st.integers(3, 6),
    dim=st.integers(1, 4),
)
def test_base_gradient_from_embeddings_with_create_graph_is_differentiable_twice(
    loss_target, contract_device, seed, size, dim
):
    """With ``create_graph=True`` the base term's gradient w.r.t. embeddings is the same
    gradient, linear in the incoming gradient ``v``, and its own gradient (a Hessian-vector
    product, as a gradient penalty needs) is the float64 reference's; NaN at the target's
    diagonal (padding) changes none of them.

    aam's pairwise Functions recompute the gradient from differentiable ops in a separate
    branch. Kills in ``_pairwise_backward`` a dropped ``unsqueeze`` of the norms, the
    ``where`` guard removed, ``detach()`` of the incoming gradient or of the recomputed
    Gram distances; in ``_PairwiseMeanSquare.backward`` the diagonal's ``where`` made a
    multiplication or removed, and ``detach()`` of the difference or of ``grad_loss``.
    """
    emb = _separated_embeddings(seed, size, dim, contract_device).requires_grad_()
    gen = torch.Generator().manual_seed(seed + 1)
    truth = torch.rand(size, size, generator=gen, dtype=torch.float64).to(contract_device)
    clean = _diagonal_filled(truth, 0.0)
    dirty = _diagonal_filled(truth, math.nan)
    details: dict[str, object] = {"seed": seed, "embeddings": f"[{size}, {dim}] float64"}

    (plain,) = torch.autograd.grad(_base_from_embeddings(loss_target, emb, dirty), emb)
    value = _base_from_embeddings(loss_target, emb, dirty)
    v = torch.ones_like(value, requires_grad=True)
    direction = torch.linspace(-1.0, 1.0, emb.numel(), dtype=torch.float64)
    direction = direction.reshape(emb.shape).to(contract_device)
    try:
        (graphed,) = torch.autograd.grad(value, emb, grad_outputs=v, create_graph=True)
        dv, hvp = torch.autograd.grad(
            (graphed * direction).sum(), (v, emb), allow_unused=True, materialize_grads=True
        )
    except RuntimeError as exc:
        raise ContractViolation(
            "C-GRAD-1",
            "base_loss",
            "the base gradient from embeddings with create_graph=True raised",
            details={**details, "exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    ref = emb.detach().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(_reference_base(ref, clean), ref, create_graph=True)
    (ref_hvp,) = torch.autograd.grad((ref_grad * direction).sum(), ref)
    ref_grad = ref_grad.detach()
    f64 = {"dtype": torch.float64, "device": contract_device}
    # d/dv <v grad, w> = <grad, w>: zero where the double-backward graph lost v.
    want_dv = (ref_grad * direction).sum().reshape(1)
    dv_scale = float((ref_grad * direction).abs().sum())
    # Float64 throughout; aam's Gram form was measured within 6e-15 of the reference
    # (relative to the largest entry), plain differences' rounding: room of 1e4.
    rel = 1e-10
    checks = {
        "plain gradient": (plain, ref_grad, float(ref_grad.abs().amax())),
        "create_graph gradient": (graphed.detach(), ref_grad, float(ref_grad.abs().amax())),
        "d/dv <v grad, w>": (dv.reshape(1).to(**f64), want_dv, dv_scale),
        "Hessian-vector product": (hvp, ref_hvp, float(ref_hvp.abs().amax())),
    }
    for what, (got, want, scale) in checks.items():
        allowed = rel * max(scale, 1.0)
        off = float((got - want).abs().amax())
        if not off <= allowed:  # NaN compares False: a NaN gradient fails here
            raise ContractViolation(
                "C-GRAD-1",
                "base_loss",
                f"the base term of embeddings: the {what} with create_graph=True differs "
                "from the float64 reference (NaN at the target's diagonal, which is padding)",
                details={
                    **details,
                    "largest difference": f"{off:.3g} (allowed {allowed:.3g})",
                    "got": got.tolist(),
                    "expected": want.tolist(),
                },
            )


@pytest.mark.rule("C-REF-1")
@given(
    batch=multitask_batches(
        terms=("base",), dtype=torch.float64, encoder_type="unifrac", embeddings=True
    )
)
def test_integer_base_targets_of_embeddings_keep_a_float64_loss_exact(
    loss_target, contract_device, batch
):
    """An int64 unifrac target beside float64 embeddings is converted to float64 before the
    pairwise term uses it (its distances are never converted to the target's dtype).

    Kills ``upcast-removed`` on the truth in aam's ``_embeddings_base_loss``: the fused
    Function then casts the distances to int64, truncating them.
    """
    true = batch.targets["base_target"]
    steps = torch.arange(true.numel(), device=true.device).reshape(true.shape) % 7
    batch = dataclasses.replace(
        batch, targets={**batch.targets, "base_target": (_BEYOND_FLOAT32 + steps).to(torch.int64)}
    )
    check_reference_values(loss_target, batch.to(contract_device), term="base_loss")


@pytest.mark.rule("C-GRAD-1", term="base_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@given(seed=st.integers(0, 2**16), size=st.integers(3, 6), dim=st.integers(1, 4))
def test_base_gradient_of_embeddings_beside_a_float64_target_is_the_reference(
    loss_target, contract_device, dtype, seed, size, dim
):
    """Float32 / float16 embeddings with a float64 unifrac target: the term is computed in
    float64, and the embeddings' gradient (in their own dtype) is the float64 reference's.

    Kills ``upcast-removed`` on the gradient in aam's ``_PairwiseMeanSquare.backward``: the
    float64 gradient of the distances meets the float32 saved rows (``addmm`` raises).
    """
    emb = _separated_embeddings(seed, size, dim, contract_device).to(dtype).requires_grad_()
    gen = torch.Generator().manual_seed(seed + 1)
    truth = torch.rand(size, size, generator=gen, dtype=torch.float64).to(contract_device)
    details: dict[str, object] = {"seed": seed, "embeddings": f"[{size}, {dim}] {dtype}"}
    try:
        (grad,) = torch.autograd.grad(_base_from_embeddings(loss_target, emb, truth), emb)
    except RuntimeError as exc:
        raise ContractViolation(
            "C-GRAD-1",
            "base_loss",
            "the base gradient of embeddings beside a float64 target raised",
            details={**details, "exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    ref = emb.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(_reference_base(ref, truth), ref)
    tol = gradient_tolerance(dtype, fan_in=size * dim, scale=float(want.abs().amax()))
    off = float((grad.double() - want).abs().amax())
    if grad.dtype != dtype or not off <= tol.atol:  # NaN compares False
        raise ContractViolation(
            "C-GRAD-1",
            "base_loss",
            "the base gradient of embeddings beside a float64 target is not the float64 "
            "reference's, in the embeddings' dtype",
            details={
                **details,
                "gradient dtype": str(grad.dtype),
                "largest difference": f"{off:.3g} (allowed {tol.describe()})",
            },
        )


@pytest.mark.rule("C-REF-1", term="base_loss")
@pytest.mark.parametrize("encoder_type", ["faith_pd", "unifrac"])
@given(seed=st.integers(0, 2**16), size=st.integers(1, 5))
def test_bool_base_targets_are_the_same_as_their_float_zeros_and_ones(
    loss_target, contract_device, encoder_type, seed, size
):
    """A bool base target (a real dtype, which the loss accepts) is its float 0 / 1 target.

    Kills ``upcast-removed`` on the truth in aam's ``_base_loss`` (faith_pd's and unifrac's
    difference): ``pred - true`` with a bool ``true`` raises in torch.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (size, 1) if encoder_type == "faith_pd" else (size, size)
    pred = torch.randn(shape, generator=gen).to(contract_device)
    true = (torch.rand(shape, generator=gen) < 0.5).to(contract_device)
    loss = loss_target.make()

    def base(target: torch.Tensor) -> torch.Tensor:
        terms = loss(
            {"base_prediction": pred},
            {"base_target": target},
            is_classifier=False,
            encoder_type=encoder_type,
        )
        value: torch.Tensor = terms["base_loss"]
        return value

    want = base(true.to(torch.float32))
    try:
        got = base(true)
    except RuntimeError as exc:
        raise ContractViolation(
            "C-REF-1",
            "base_loss",
            f"a bool {encoder_type} base target raised",
            details={"seed": seed, "exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    if not torch.equal(got, want):
        raise ContractViolation(
            "C-REF-1",
            "base_loss",
            f"a bool {encoder_type} base target gave another value than its float 0 / 1",
            details={"seed": seed, "bool target": got.item(), "float target": want.item()},
        )
