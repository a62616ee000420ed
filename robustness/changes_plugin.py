"""The pytest side of ``gate --changed``: ``--robustness-terms`` keeps only the named terms' tests.

Loaded by the gate (in its own process and in the xdist workers) beside
:mod:`robustness.plugin`, which records each contract test's term; a test without a term always
runs. Kept apart from :mod:`robustness.changes` because the gate imports that one before pytest
starts, and pytest can only assertion-rewrite a plugin module it imports itself.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from robustness.changes import term_of

__all__ = ["pytest_addoption", "pytest_collection_modifyitems"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--robustness-terms``."""
    parser.getgroup("robustness").addoption(
        "--robustness-terms",
        default=None,
        metavar="TERM[,TERM...]",
        help="run only the contract tests of these terms (count_loss, regression, ...); tests "
        "without a term always run",
    )


def _item_term(item: pytest.Item) -> str | None:
    for name, value in item.user_properties:
        if name == "term":
            return None if value == "-" else str(value)
    return None


@pytest.hookimpl(trylast=True)  # after robustness.plugin has recorded each test's term
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the tests of the ``--robustness-terms`` terms (and those without a term)."""
    wanted = config.getoption("--robustness-terms", None)
    if not wanted:
        return
    terms = {t.strip() for t in str(wanted).split(",") if t.strip()}

    def drop(item: pytest.Item) -> bool:
        term = _item_term(item)
        return term is not None and term_of(term) not in terms

    _deselect(config, items, drop)


def _deselect(
    config: pytest.Config, items: list[pytest.Item], drop: Callable[[pytest.Item], bool]
) -> None:
    deselected = [item for item in items if drop(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not drop(item)]
