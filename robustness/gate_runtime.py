"""The gate's pytest plugin for its own processes: a frozen garbage-collector heap while tests run.

Loaded only by ``python -m robustness gate`` (in its process and its xdist workers), never
through the ``pytest11`` entry point: it changes how the interpreter collects garbage, which is
the gate's business, not that of someone's own test session.

After collection the heap holds torch, Hypothesis, pytest and the contract (about 200,000
objects); every full collection while the tests run would scan them again, and Hypothesis makes
enough garbage to trigger thousands of collections. :func:`gc.freeze` moves them to the
permanent generation, so collections scan only what the tests create (the serial dev contract:
22.2 s of CPU before, 19.0 s after, on 2 loaded cores). Nothing is frozen that the tests
could free: it is what collection built. ``pytest_unconfigure`` unfreezes it again.
"""

from __future__ import annotations

import gc

import pytest

__all__ = ["pytest_collection_finish", "pytest_unconfigure"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what start-up and collection built (see the module docstring)."""
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give the heap back to the collector (an in-process gate goes on running)."""
    gc.unfreeze()
