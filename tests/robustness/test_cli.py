"""The command line's usage errors: exit status 2 and one clear line, never a traceback."""

import subprocess
import sys

import pytest


def robustness(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robustness", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("frobnicate",), "unknown command 'frobnicate'", id="unknown-command"),
        pytest.param(
            ("gate", "--target", "nope.nope:Loss"), "cannot be imported", id="bogus-target"
        ),
        pytest.param(
            ("gate", "--target", "aam.training.losses"),
            "must be 'module:Class'",
            id="target-without-class",
        ),
        pytest.param(("gate", "--metrics", "robustness.errors"), "lacks", id="bogus-metrics"),
        pytest.param(("gate", "--profile", "fast"), "invalid choice: 'fast'", id="bad-profile"),
        pytest.param(("gate", "--workers", "-1"), "expected a number >= 0", id="bad-workers"),
        pytest.param(
            ("gate", "--rules", "C-NOPE-9"), "no contract tests selected", id="unknown-rule"
        ),
        pytest.param(("replay", "missing.pt"), "does not exist", id="missing-repro"),
        pytest.param(("selftest", "--mutants", "nope"), "unknown mutant", id="unknown-mutant"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message, tmp_path):
    done = robustness(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stdout + done.stderr


def test_replay_refuses_a_file_that_is_not_a_repro(tmp_path):
    import torch

    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    done = robustness("replay", str(path))
    assert done.returncode == 2
    assert "is not a repro file" in done.stderr


def test_replay_refuses_to_run_a_function_outside_the_checks(tmp_path):
    import torch

    path = tmp_path / "evil.pt"
    torch.save(
        {"format": 1, "rule": "C-X", "term": "t", "check": "os:system", "kind": "loss", "args": {}},
        path,
    )
    done = robustness("replay", str(path))
    assert done.returncode == 2
    assert "not a robustness check" in done.stderr


def test_no_command_prints_usage_and_exits_2():
    done = robustness()
    assert done.returncode == 2
    assert "gate" in done.stdout
    assert "replay" in done.stdout


@pytest.mark.parametrize(
    ("passing", "failing"),
    [
        ("passing examples", "failing examples, 0 invalid examples"),  # hypothesis <= 6.16x
        ("passing", "failing, and 0 invalid test cases"),  # hypothesis >= 6.17x
    ],
    ids=["old-format", "new-format"],
)
def test_examples_are_counted_from_both_hypothesis_statistics_formats(passing, failing):
    from robustness.gate import _EXAMPLES_RE

    stats = (
        f"  - during explicit phase (0.01 seconds):\n    - 3 {passing}, 0 {failing}\n"
        f"  - during generate phase (0.21 seconds):\n    - 58 {passing}, 2 {failing}\n"
    )
    assert sum(int(a) + int(b) for a, b in _EXAMPLES_RE.findall(stats)) == 63
