"""The Hypothesis profile a process has loaded survives the in-process pytest runs of the harness.

An in-process ``pytest.main`` (the gate with ``--workers 0``) loads the profile it is asked
for and would leave it loaded: every later test of that process (an
xdist worker of this suite, a user's suite that calls the gate) would then run under it, so
its verdict would depend on which tests ran before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from robustness.gate import EXIT_OK, run_gate
from robustness.profiles import profile_kept


@pytest.fixture
def loaded_ci() -> Iterator[None]:
    before = settings.get_current_profile_name()
    settings.load_profile("ci")
    try:
        yield
    finally:
        settings.load_profile(before)


def test_profile_kept_restores_the_profile_after_a_load_and_after_an_error(loaded_ci):
    with profile_kept():
        settings.load_profile("commit")
    assert settings.get_current_profile_name() == "ci"

    def load_then_fail() -> None:
        with profile_kept():
            settings.load_profile("thorough")
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        load_then_fail()
    assert settings.get_current_profile_name() == "ci"


def test_an_in_process_gate_run_leaves_the_loaded_profile_loaded(loaded_ci, tmp_path, capsys):
    # Also a gate run inside a pytest session that already imported the harness's plugin:
    # gate.ini's "error" filter once made pytest's can't-rewrite warning for it fatal.
    argv = ["--rules", "C-SCALAR-1", "--profile", "commit", "--workers", "0"]
    assert run_gate([*argv, "--state", str(tmp_path / "state.json")]) == EXIT_OK
    assert "profile commit" in capsys.readouterr().out  # the run itself used commit
    assert settings.get_current_profile_name() == "ci"
