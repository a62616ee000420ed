"""`python -m robustness replay`: files, folders, --last-failed, regression baselines; --version."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MUTANT = "robustness.mutants.count_keepdim:MultiTaskLoss"
AAM = "aam.training.losses:MultiTaskLoss"


def robustness(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBUSTNESS_")}
    return subprocess.run(
        [sys.executable, "-m", "robustness", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class Run:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def replay(monkeypatch, capsys):
    """``python -m robustness replay ARGS`` in this process (cheap: torch is imported)."""
    from robustness.__main__ import main

    for key in [k for k in os.environ if k.startswith("ROBUSTNESS_")]:
        monkeypatch.delenv(key)

    def run(*args: str, cwd: Path) -> Run:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = main(["replay", *args])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory) -> Path:
    """A directory where one gate run against a mutant left two repro files (C-SCALAR-1).

    Two xdist workers, so that the two failures may land in different workers: one run must
    still be one folder (the workers take the controller's run id).
    """
    workdir = tmp_path_factory.mktemp("replay")
    run = robustness(
        "gate", "--target", MUTANT, "--rules", "C-SCALAR-1", "--profile", "dev",
        "--workers", "2", "--quiet", cwd=workdir,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    return workdir


def _copy(failed_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(failed_run / ".robustness", tmp_path / ".robustness")
    return tmp_path


def _repros(workdir: Path) -> list[Path]:
    return sorted((workdir / ".robustness" / "repros").rglob("*.pt"))


def test_each_run_keeps_its_repros_in_its_own_folder_named_by_last(failed_run):
    repros = _repros(failed_run)
    assert len(repros) == 2
    folder = repros[0].parent
    assert (failed_run / ".robustness/repros/last").read_text().strip() == folder.name
    assert {p.parent for p in repros} == {folder}


def test_replay_takes_a_folder_and_reports_every_file(replay, failed_run, tmp_path):
    workdir = _copy(failed_run, tmp_path)
    run = replay(".robustness/repros", cwd=workdir)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.count("the violation reproduces") == 2
    assert "2 of 2 recorded violations reproduce" in run.stdout


def test_replay_takes_several_files_and_exits_0_once_fixed(replay, failed_run, tmp_path):
    workdir = _copy(failed_run, tmp_path)
    files = [str(p) for p in _repros(workdir)]
    run = replay(*files, "--target", AAM, cwd=workdir)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("no longer reproduces") == 2


def test_last_failed_replays_only_the_latest_run(replay, failed_run, tmp_path):
    workdir = _copy(failed_run, tmp_path)
    repros = workdir / ".robustness" / "repros"
    older = repros / "20000101T000000-1"
    older.mkdir()
    shutil.copy(_repros(workdir)[0], older / "C-OLD-1-x-0000000000.pt")
    run = replay("--last-failed", cwd=workdir)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 of 2 recorded violations reproduce" in run.stdout
    # A later run that found nothing points `last` at a folder that was never made.
    (repros / "last").write_text("20990101T000000-2\n")
    run = replay("--last-failed", cwd=workdir)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nothing to replay" in run.stdout


def _regress_repro(failed_run: Path, tmp_path: Path) -> Path:
    """A C-REGRESS-1 repro as a --baseline-ref run writes it, its temporary checkout gone."""
    payload = torch.load(_repros(failed_run)[0], weights_only=True)
    payload["args"] = {
        **payload["args"],
        "baseline": f"robustness_baseline_gone.{AAM}",
    }
    payload.update(
        rule="C-REGRESS-1",
        check="robustness.properties._regress:check_regress_values",
        loss_target=AAM,
        baseline_path=str(tmp_path / "robustness-baseline-gone"),
    )
    path = tmp_path / "C-REGRESS-1-total_loss-0123456789.pt"
    torch.save(payload, path)
    return path


def test_a_regression_repro_whose_temporary_baseline_is_gone_is_one_line(
    replay, failed_run, tmp_path
):
    path = _regress_repro(failed_run, tmp_path)
    run = replay(str(path), cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1
    assert "temporary checkout" in run.stderr
    assert "--baseline MODULE:CLASS" in run.stderr


def test_a_regression_repro_replays_against_an_importable_baseline(replay, failed_run, tmp_path):
    path = _regress_repro(failed_run, tmp_path)
    run = replay(str(path), "--baseline", AAM, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no longer reproduces" in run.stdout
    run = replay(str(path), "--target", MUTANT, "--baseline", AAM, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[C-REGRESS-1]" in run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((), "give repro files or folders, or --last-failed", id="nothing"),
        pytest.param(("--last-failed",), "--last-failed: ", id="no-last-run"),
        pytest.param(("empty",), "holds no repro files", id="empty-folder"),
        pytest.param(("missing.pt",), "does not exist", id="missing-file"),
    ],
)
def test_replay_usage_errors_are_one_line(replay, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    run = replay(*args, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1
    assert message in run.stderr


def test_version(tmp_path):
    from importlib.metadata import version

    run = robustness("--version", cwd=tmp_path)
    assert run.returncode == 0
    assert run.stdout.strip() == f"robustness {version('aam-robustness')}"


def test_a_missing_dependency_exits_3_with_one_line(tmp_path):
    code = (
        "import sys; sys.modules['xdist'] = None\n"
        "from robustness.__main__ import main\n"
        "sys.exit(main(['gate']))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1
    assert "missing dependency 'xdist'" in run.stderr
    assert "pip install pytest-xdist" in run.stderr
