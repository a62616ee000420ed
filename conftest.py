"""Project-level pytest set-up: a quick Hypothesis profile when no other is chosen.

The packaged plugin registers the profiles; under ``CI=true`` Hypothesis itself loads ``ci``.
Locally, plain ``pytest`` uses ``dev`` rather than Hypothesis's ``default`` (random, with a
200 ms deadline that first calls into torch trip over). ``--hypothesis-profile`` wins.
"""

from hypothesis import settings

import robustness.profiles  # noqa: F401 - registers dev/ci/thorough


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None) and (
        settings.get_current_profile_name() == "default"
    ):
        settings.load_profile("dev")
