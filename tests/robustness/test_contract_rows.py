"""The contract's per-row strategies draw values only for the running row's head."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustness.contract import test_loss_rules as loss_rules
from robustness.contract._row import RUNNING_TERM, running_term
from robustness.strategies import MultiTaskBatch

_HEADS = {
    "target_loss": ("target",),
    "count_loss": ("count",),
    "base_loss": ("base",),
    "nuc_loss": ("nuc",),
    "total_loss": ("target", "count", "base", "nuc"),
}


@pytest.mark.parametrize("term", sorted(_HEADS))
def test_row_batches_draw_only_the_running_terms_head(term: str) -> None:
    seen: list[MultiTaskBatch] = []

    @settings(max_examples=5, database=None)
    @given(batch=loss_rules.ORDINARY)
    def draw(batch: MultiTaskBatch) -> None:
        seen.append(batch)

    token = RUNNING_TERM.set(term)
    try:
        draw()
    finally:
        RUNNING_TERM.reset(token)
    assert seen
    assert all(batch.terms == _HEADS[term] for batch in seen)


@settings(max_examples=5, database=None)
@given(batch=loss_rules.ORDINARY)
def test_outside_a_row_every_head_is_drawn(batch: MultiTaskBatch) -> None:
    assert running_term() is None
    assert batch.terms == _HEADS["total_loss"]


@pytest.mark.parametrize("term", ["count_loss", "total_loss"])
def test_the_plugin_sets_the_running_term(term: str) -> None:
    assert running_term() == term


@given(drawn=st.just(None))
@pytest.mark.parametrize("term", ["nuc_loss"])
def test_the_running_term_is_seen_inside_hypothesis(term: str, drawn: None) -> None:
    assert drawn is None
    assert running_term() == term
