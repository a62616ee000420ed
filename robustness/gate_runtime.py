"""The gate's pytest plugin for its own processes: a frozen garbage-collector heap while tests run.

Loaded only by ``python -m robustness gate`` (in its process and its xdist workers), never
through the ``pytest11`` entry point: it changes how the interpreter collects garbage, which is
the gate's business, not that of someone's own test session.

After collection the heap holds torch, Hypothesis, pytest and the contract (about 200,000
objects); every full collection while the tests run would scan them again, and Hypothesis makes
enough garbage to trigger thousands of collections. :func:`gc.freeze` moves them to the
permanent generation, so collections scan only what the tests create (the serial dev contract:
22.2 s of CPU before, 19.0 s after, on 2 loaded cores). Nothing is frozen that the tests
could free: it is what start-up and collection built (the xdist controller, which collects
nothing, freezes at session start).

The heap stays frozen through the end of the session. pytest's last cleanup runs five full
collections to surface unraisable exceptions; what the tests left behind is not frozen, so
they still find it, but they no longer rescan the start-up heap (0.75 s of CPU per process
on 2 cores). An xdist worker exits right after, so it never unfreezes: the interpreter's
final collection would only rescan that heap once more (0.4 s). In the gate's own process
(which goes on running, possibly in someone's test session) the heap is unfrozen by a
cleanup that runs after pytest's.
"""

from __future__ import annotations

import gc

import pytest

__all__ = ["pytest_collection_finish", "pytest_configure", "pytest_sessionstart"]


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Unfreeze at the very end of an in-process session (see the module docstring).

    ``tryfirst``: this cleanup is registered before those of pytest's own plugins, and
    cleanups run last-in first-out, so it runs after the unraisable-exception collections.
    """
    if not _is_xdist_worker(config):
        config.add_cleanup(gc.unfreeze)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Freeze what start-up built (all the xdist controller has: it does not collect)."""
    gc.freeze()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what start-up and collection built (see the module docstring)."""
    gc.freeze()
