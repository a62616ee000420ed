"""The packaged C-GRAD-1 suite: every term's gradient against the float64 reference gradient.

Per-term isolation: a per-term row draws batches holding only that term's head (so a bug
confined to one term fails that term's row and ``total_loss``'s, never the others'), and the
``total_loss`` row draws every head. Values are ordinary (with non-contiguous layouts) or
finite extremes of the dtype. The explicit examples are the contract suite's historical
batches cut down to one head (a remainder batch, B = 1, duplicate embeddings, NaN at padding,
equal nucleotide logits of size 1e7 and finfo.max), so a backward that is wrong on ordinary
inputs is caught on them whatever generation draws.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from robustness.contract.test_loss_rules import (
    DUPLICATES,
    EQUAL_HUGE_LOGITS,
    EQUAL_MAX_LOGITS,
    NAN_PADDING,
    REMAINDER,
    SINGLE,
    WIDE_DUPLICATES,
)
from robustness.properties._gradients import check_reference_gradients
from robustness.strategies import MultiTaskBatch, multitask_batches

_HEADS = {"target_loss": "target", "count_loss": "count", "base_loss": "base", "nuc_loss": "nuc"}
_KEYS = {
    "target": ("target_prediction",),
    "count": ("count_prediction",),
    "base": ("base_prediction", "embeddings"),
    "nuc": ("nuc_predictions",),
}


def only(batch: MultiTaskBatch, head: str) -> MultiTaskBatch:
    """``batch`` with the outputs of every head but ``head`` dropped (targets kept)."""
    keys = _KEYS[head]
    return dataclasses.replace(
        batch,
        outputs={k: v for k, v in batch.outputs.items() if k in keys},
        padded={k: v for k, v in batch.padded.items() if k in keys},
    )


def _batches(term: str) -> st.SearchStrategy[MultiTaskBatch]:
    terms = (_HEADS[term],) if term in _HEADS else ("target", "count", "base", "nuc")
    return multitask_batches(terms=terms, allow_noncontiguous=True) | multitask_batches(
        terms=terms, kind="extreme"
    )


def _examples(term: str) -> list[MultiTaskBatch]:
    batches = [REMAINDER, SINGLE, DUPLICATES, NAN_PADDING, EQUAL_HUGE_LOGITS, EQUAL_MAX_LOGITS]
    if term == "base_loss":
        batches.append(WIDE_DUPLICATES)  # the pairwise term at a size past cdist's switch
    if term in _HEADS:
        return [only(b, _HEADS[term]) for b in batches]
    return batches


def _gradient_test(term: str) -> Any:
    @pytest.mark.rule("C-GRAD-1", term=term)
    @given(batch=_batches(term))
    def test(loss_target: Any, contract_device: str, batch: MultiTaskBatch) -> None:
        check_reference_gradients(loss_target, batch.to(contract_device), term=term)

    for batch in reversed(_examples(term)):
        test = example(batch=batch)(test)
    test.__name__ = f"test_{term}_gradient_matches_the_float64_reference"
    test.__qualname__ = test.__name__
    return test


# One test per term (not a parametrization): each row draws from its own strategy.
test_target_loss_gradient_matches_the_float64_reference = _gradient_test("target_loss")
test_count_loss_gradient_matches_the_float64_reference = _gradient_test("count_loss")
test_base_loss_gradient_matches_the_float64_reference = _gradient_test("base_loss")
test_nuc_loss_gradient_matches_the_float64_reference = _gradient_test("nuc_loss")
test_total_loss_gradient_matches_the_float64_reference = _gradient_test("total_loss")
