"""The term of the contract row being run, for strategies that draw only what the row checks.

The plugin (:func:`robustness.plugin.pytest_runtest_call`) sets it from the test's ``term``
parameter for the duration of the test call; outside a contract test it is ``None``. It is a
:class:`contextvars.ContextVar`, so a test run in another thread or task sees its own value.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["RUNNING_TERM", "running_term"]

#: The ``term`` parameter of the contract test being called (``"count_loss"``, ...), or None.
RUNNING_TERM: ContextVar[str | None] = ContextVar("robustness_running_term", default=None)


def running_term() -> str | None:
    """The ``term`` of the running contract test, or ``None`` outside one (or for no term)."""
    return RUNNING_TERM.get()
