"""Hypothesis settings profiles, registered once on import.

Select one with Hypothesis's own option, ``pytest --hypothesis-profile=dev``. Under
``CI=true`` Hypothesis loads the profile named ``ci`` by default; registering ours under that
name replaces Hypothesis's built-in one, so CI gets the deterministic contract profile.

* ``commit``: for a pre-commit hook (``gate --changed --profile commit``). Every explicit
  example runs (``Phase.explicit``: the corpus' historical failures, written into the contract
  as ``@example`` cases and parametrized hand-built cases), then only
  :data:`COMMIT_EXAMPLES` generated ones per test, derandomized and without a database, so a
  commit sees the same verdict as the next one on the same code. It keeps shrinking: a
  failure it finds is reported minimal. Explicit cases carry every bug class the corpus
  kills (``python -m robustness selftest --profile commit`` killed 35/35 mutants); the few
  generated cases keep the search from being a fixed list.
* ``dev``: quick feedback while editing loss code.
* ``ci``: deterministic (``derandomize=True``, no database, no deadline) with enough examples
  that every mutant in the corpus dies; the same verdict every run.
* ``thorough``: many random examples, example database on, for nightly or pre-release runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hypothesis import HealthCheck, Phase, settings

__all__ = ["COMMIT_EXAMPLES", "PROFILES", "profile_kept", "register_profiles"]

# print_blob=False: a contract failure ends with the repro file's `python -m robustness replay`
# command (robustness.plugin); Hypothesis's @reproduce_failure hint cannot be applied to an
# installed test module.

#: Health checks that misfire on tensor-building strategies (large draws, slow first calls
#: into torch); they say nothing about the code under test.
_SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example)

#: Generated examples per test in the ``commit`` profile (on top of every explicit example).
COMMIT_EXAMPLES = 3

PROFILES: dict[str, settings] = {
    "commit": settings(
        max_examples=COMMIT_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=_SUPPRESSED,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=True,
    ),
    "dev": settings(
        max_examples=10,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=_SUPPRESSED,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=False,
    ),
    "ci": settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=_SUPPRESSED,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=False,
    ),
    "thorough": settings(
        max_examples=1000,
        deadline=None,
        derandomize=False,
        suppress_health_check=_SUPPRESSED,
        print_blob=False,
    ),
}


def register_profiles() -> None:
    """Register every profile in :data:`PROFILES` (idempotent)."""
    for name, profile in PROFILES.items():
        settings.register_profile(name, profile)


@contextlib.contextmanager
def profile_kept() -> Iterator[None]:
    """Give back the Hypothesis profile that was loaded before, on leaving the block.

    An in-process ``pytest.main`` (the gate's run with ``--workers 0``) loads the profile it
    was asked for, through Hypothesis's plugin or ``[tool.robustness]``, and leaves it
    loaded. In a test process (the project's own suite, a user's suite that calls the gate)
    every later test in that process would then run under that profile: the verdict would
    depend on which tests an xdist worker happened to run before.
    """
    name = settings.get_current_profile_name()
    try:
        yield
    finally:
        settings.load_profile(name)


register_profiles()
