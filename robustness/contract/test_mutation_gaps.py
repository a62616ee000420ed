"""Contract gaps found by ``python -m robustness mutate`` on aam, closed here.

Each test below kills surviving mutants of aam's own code that the rest of the suite let
through (see docs/mutation.md, "Survivors"); each was seen failing on its mutant first. They
check rules the contract already states, on inputs the other tests never drew. Rule-marked
like the rest of the suite, so the gate reports and selects them by rule id.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given

from robustness.errors import ContractViolation
from robustness.properties._losses import check_reference_values
from robustness.properties._regress import _only_head
from robustness.strategies import MultiTaskBatch, multitask_batches
from robustness.target import LossTarget

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
@given(batch=multitask_batches())
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

# Prediction key -> the term its errors must name.
_PREDICTIONS = {
    "target_prediction": "target_loss",
    "count_prediction": "count_loss",
    "base_prediction": "base_loss",
    "nuc_predictions": "nuc_loss",
}


def _integer(t: torch.Tensor) -> torch.Tensor:
    return t.detach().round().clamp(-100, 100).to(torch.int64)


def _listed(t: torch.Tensor) -> object:
    return t.detach().tolist()


@pytest.mark.rule("C-INPUT-1")
@pytest.mark.parametrize("key", list(_PREDICTIONS))
@pytest.mark.parametrize("bad", [_integer, _listed], ids=["integer-dtype", "python-list"])
@given(batch=multitask_batches())
def test_a_prediction_that_is_not_a_floating_tensor_raises_naming_the_term(
    loss_target, contract_device, key, bad, batch
):
    """Bad input gets a clear error: an integer tensor or a list where logits belong.

    Kills ``raise-removed`` in aam's ``_require_tensor`` / ``_require_floating``: without the
    check an integer prediction is silently accepted (or fails deep inside with an
    AttributeError that names nothing).
    """
    if key not in batch.outputs:
        return
    term = _PREDICTIONS[key]
    batch = _only_head(batch, term).to(contract_device)  # per-term isolation
    outputs = dict(batch.outputs)
    outputs[key] = bad(outputs[key])
    loss = loss_target.make(**batch.loss_kwargs)
    try:
        loss(
            outputs,
            batch.targets,
            is_classifier=batch.is_classifier,
            encoder_type=batch.encoder_type,
        )
    except (TypeError, ValueError) as exc:
        if term in str(exc):
            return
        raise ContractViolation(
            "C-INPUT-1",
            term,
            f"{key} as {bad.__name__[1:]} raised without naming {term}",
            details={"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    except Exception as exc:
        raise ContractViolation(
            "C-INPUT-1",
            term,
            f"{key} as {bad.__name__[1:]} raised {type(exc).__name__}, not a TypeError or "
            f"ValueError naming {term}",
            details={"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    raise ContractViolation(
        "C-INPUT-1",
        term,
        f"{key} as {bad.__name__[1:]} was accepted; expected a TypeError "
        f"or ValueError naming {term}",
        details={"dtype": str(batch.dtype)},
    )


# Target key -> (the term its errors must name, the bad version of it).
_BAD_TARGETS = {
    "nucleotides-as-float": ("nucleotides", "nuc_loss", lambda t: t.to(torch.float32)),
    "class-ids-as-float": ("target", "target_loss", lambda t: t.to(torch.float32)),
    "counts-as-complex": ("counts", "count_loss", lambda t: t.to(torch.complex64)),
    "base-target-as-complex": ("base_target", "base_loss", lambda t: t.to(torch.complex64)),
}


@pytest.mark.rule("C-INPUT-1")
@pytest.mark.parametrize("case", list(_BAD_TARGETS))
@given(batch=multitask_batches())
def test_ids_that_are_not_integers_and_complex_truths_raise_naming_the_term(
    loss_target, contract_device, case, batch
):
    """Float ids (they would be truncated) and complex truths get a clear error.

    Kills ``raise-removed`` in aam's ``_require_integer`` and ``_require_real``.
    """
    key, term, bad = _BAD_TARGETS[case]
    if key not in batch.targets or (key == "target" and not batch.is_classifier):
        return
    batch = _only_head(batch, term).to(contract_device)  # per-term isolation
    targets = dict(batch.targets)
    targets[key] = bad(targets[key])
    loss = loss_target.make(**batch.loss_kwargs)
    try:
        loss(
            batch.outputs,
            targets,
            is_classifier=batch.is_classifier,
            encoder_type=batch.encoder_type,
        )
    except (TypeError, ValueError) as exc:
        if term in str(exc):
            return
        raise ContractViolation(
            "C-INPUT-1",
            term,
            f"{case} raised without naming {term}",
            details={"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    except Exception as exc:
        raise ContractViolation(
            "C-INPUT-1",
            term,
            f"{case} raised {type(exc).__name__}, not a TypeError or ValueError naming {term}",
            details={"exception": f"{type(exc).__name__}: {exc}"},
        ) from exc
    raise ContractViolation(
        "C-INPUT-1", term, f"{case} was accepted; expected a ValueError naming {term}"
    )


# --------------------------------------------------------------------------- C-INPUT-1 (weights)

_BAD_CLASS_WEIGHTS = {
    "not-numbers": "heavy",
    "bool": torch.tensor([True, False]),
    "complex": torch.tensor([1.0 + 1j, 2.0]),
    "two-dimensional": torch.ones(2, 3),
    "empty": torch.ones(0),
}


@pytest.mark.rule("C-INPUT-1")
@pytest.mark.parametrize("case", list(_BAD_CLASS_WEIGHTS))
def test_unusable_class_weights_raise_a_value_error_naming_them(loss_target, case):
    """class_weights that are not a non-empty 1-D real tensor fail at construction, clearly.

    Kills ``raise-removed`` in aam's ``_validate_class_weights`` (conversion, dtype, shape).
    """
    try:
        loss_target.make(class_weights=_BAD_CLASS_WEIGHTS[case])
    except ValueError as exc:
        if "class_weights" in str(exc):
            return
        raise ContractViolation(
            "C-INPUT-1",
            "target_loss",
            f"class_weights {case} raised without naming them",
            details={"exception": str(exc)},
        ) from exc
    except Exception as exc:
        raise ContractViolation(
            "C-INPUT-1",
            "target_loss",
            f"class_weights {case} raised {type(exc).__name__}, not a ValueError",
            details={"exception": str(exc)},
        ) from exc
    raise ContractViolation(
        "C-INPUT-1", "target_loss", f"class_weights {case} was accepted; expected a ValueError"
    )


# --------------------------------------------------------------------------- C-SHAPE-1 (count)


@pytest.mark.rule("C-SHAPE-1")
@given(batch=multitask_batches())
def test_count_predictions_with_more_than_one_column_raise_naming_the_term(
    loss_target, contract_device, batch
):
    """``[B, A, 2]`` count predictions (and counts) against a ``[B, A]`` mask: a ValueError.

    The mask still matches ``shape[:-1]``, so only the ``[B, A, 1]`` check stands between
    this input and a silently averaged second column. Kills ``raise-removed`` in aam's
    ``_count_inputs``.
    """
    if "count_prediction" not in batch.outputs:
        return
    batch = _only_head(batch, "count_loss").to(contract_device)  # per-term isolation
    outputs, targets = dict(batch.outputs), dict(batch.targets)
    outputs["count_prediction"] = outputs["count_prediction"].detach().repeat(1, 1, 2)
    targets["counts"] = targets["counts"].repeat(1, 1, 2)
    loss = loss_target.make(**batch.loss_kwargs)
    try:
        loss(outputs, targets, is_classifier=batch.is_classifier, encoder_type=batch.encoder_type)
    except ValueError as exc:
        if "count_loss" in str(exc):
            return
        raise ContractViolation(
            "C-SHAPE-1",
            "count_loss",
            "a [B, A, 2] count prediction raised without naming count_loss",
            details={"exception": str(exc)},
        ) from exc
    raise ContractViolation(
        "C-SHAPE-1",
        "count_loss",
        "a [B, A, 2] count prediction was accepted; expected a "
        "ValueError naming count_loss and the shape",
        details={"count_prediction": tuple(outputs["count_prediction"].shape)},
    )


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
@given(batch=multitask_batches())
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
