"""The README's route from another repository, run as written in a fresh repository.

The repository is built in tmp_path: a package ``mylosses`` (not installed) with a subclass
of aam's loss, and the README's ``[tool.robustness]`` table plus a quick selection (dev
profile, one rule) so that the README's commands run unchanged and fast.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Running the contract from another repository"

LOSSES = '''
from aam.training.losses import MultiTaskLoss as _AamLoss
from aam.training.losses import compute_pairwise_distances as compute_pairwise_distances


class MultiTaskLoss(_AamLoss):
    """This repository's loss: aam's, unchanged."""


class KeepdimLoss(_AamLoss):
    """A bug: the count term keeps a dimension (C-SCALAR-1)."""

    def compute_count_loss(self, count_prediction, counts, mask):
        return super().compute_count_loss(count_prediction, counts, mask).reshape(1)


class ConfigLoss(_AamLoss):
    """A constructor of another shape: a usage error, not a FAIL on every row."""

    def __init__(self, config):
        super().__init__(**config)
'''


def _section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def _block(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", _section(), re.S)
    assert match, f"no {language} block in the README's {SECTION!r}"
    return match.group(1)


def readme_commands() -> list[str]:
    return [line.strip() for line in _block("sh").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    """A ``pytest`` console script for this interpreter, as pip writes one.

    Like pip's script it puts its own folder, not the current directory, on ``sys.path``,
    which is what makes an uninstalled package unimportable for the console ``pytest``.
    """
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "pytest"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom pytest import console_main\n"
        "sys.exit(console_main())\n"
    )
    script.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def repository(tmp_path_factory, scripts) -> Path:
    root = tmp_path_factory.mktemp("other-repository")
    (root / "mylosses").mkdir()
    (root / "mylosses" / "__init__.py").write_text("")
    (root / "mylosses" / "losses.py").write_text(LOSSES)
    table = _block("toml") + 'profile = "dev"\nrules = ["C-SCALAR-1"]\n'
    (root / "pyproject.toml").write_text('[project]\nname = "mylosses"\nversion = "0"\n\n' + table)
    (root / ".scripts").write_text(str(scripts))
    return root


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a shell command as a user would: the venv's scripts on PATH, nothing of ours set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ROBUSTNESS_", "PYTEST_", "PYTHON")) and k != "CI"
    }
    scripts = (cwd / ".scripts").read_text()
    env["PATH"] = os.pathsep.join([scripts, os.path.dirname(sys.executable), env.get("PATH", "")])
    return subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


def test_the_readme_names_both_commands():
    commands = readme_commands()
    assert commands[0] == "python -m robustness gate"
    assert commands[1].startswith("pytest --pyargs robustness.contract")


def test_the_readme_gate_command_works_in_a_fresh_repository(repository):
    result = run(readme_commands()[0], repository)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "target  mylosses.losses:MultiTaskLoss" in result.stdout
    assert "metrics none" in result.stdout
    assert "C-SCALAR-1  count_loss" in result.stdout


def test_the_readme_pytest_command_works_with_the_console_pytest(repository):
    result = run(readme_commands()[1], repository)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "robustness: target mylosses.losses:MultiTaskLoss, metrics none" in out
    assert "robustness: hypothesis profile 'dev', known file" in out
    assert re.search(r"\d+ passed", out)
    # The cuda half of each row is skipped, and the reason is shown without -rs.
    assert "robustness: skipped contract tests" in out
    assert "cuda not available" in out or "cuda" in out


def test_a_failure_ends_with_the_replay_command_not_reproduce_failure(repository):
    command = readme_commands()[1].replace("losses:MultiTaskLoss", "losses:KeepdimLoss")
    result = run(command, repository)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "[C-SCALAR-1]" in out
    match = re.search(r"python -m robustness replay (\S+\.pt)", out)
    assert match, out
    assert "reproduce_failure" not in out
    replay = run(f"python -m robustness replay {shlex.quote(match.group(1))}", repository)
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "the violation reproduces" in replay.stdout


def test_a_constructor_that_does_not_fit_is_a_usage_error(repository):
    result = run("python -m robustness gate --target mylosses.losses:ConfigLoss", repository)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1
    assert "constructor ConfigLoss(config)" in result.stderr
    assert "expected keyword arguments with defaults: penalty" in result.stderr
