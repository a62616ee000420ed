"""Contract gaps found by ``python -m robustness mutate`` on aam, closed here.

Each test below kills surviving mutants of aam's own code that the rest of the suite let
through (see docs/mutation.md, "Survivors"); each was seen failing on its mutant first. They
check rules the contract already states, on inputs the other tests never drew. Rule-marked
like the rest of the suite, so the gate reports and selects them by rule id.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

from robustness.errors import ContractViolation
from robustness.strategies import MultiTaskBatch, multitask_batches

# Fills for padded truths: what a data loader leaves in padding (NaN, inf, huge values).
_FLOAT_FILLS = (("NaN", math.nan), ("+inf", math.inf), ("-inf", -math.inf), ("1e30", 1e30))


def _terms(loss_target, batch: MultiTaskBatch) -> dict[str, torch.Tensor]:
    loss = loss_target.make(**batch.loss_kwargs)
    return loss(
        batch.outputs,
        batch.targets,
        is_classifier=batch.is_classifier,
        encoder_type=batch.encoder_type,
    )


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
    batch = batch.to(contract_device)
    if term != "total_loss" and term.removesuffix("_loss") not in batch.terms:
        return
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
