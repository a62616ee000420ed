"""Batch strategies of the per-term contract rows: each draws tensors only for its own head.

A per-term row judges the batch restricted to its term's head
(:func:`robustness.properties._regress._only_head`), so drawing the other heads' tensors
only to throw them away was most of a per-term example's cost. The running row's term comes
from :func:`robustness.contract._row.running_term`, set by the plugin.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from robustness.contract._row import running_term
from robustness.properties._losses import _HEAD_OF
from robustness.strategies import TERMS, MultiTaskBatch, multitask_batches

__all__ = ["row_batches"]


def row_batches(**options: Any) -> st.SearchStrategy[MultiTaskBatch]:
    """``multitask_batches(**options)``, drawing tensors only for the running row's head.

    The other heads' sizes and options are still drawn (``values_for``), so the restricted
    batch is distributed exactly as a batch of every head restricted afterwards.
    ``total_loss`` rows, and tests without a ``term`` parameter, draw every head.
    """
    heads = tuple(options.get("terms", TERMS))
    every_head = multitask_batches(**options)
    by_term = {
        term: multitask_batches(values_for=(head,), **options)
        for term, head in _HEAD_OF.items()
        if head in heads
    }

    @st.composite
    def draw_row_batch(draw: st.DrawFn) -> MultiTaskBatch:
        return draw(by_term.get(running_term() or "", every_head))

    return draw_row_batch()
