"""[tool.robustness] in pyproject.toml: validation, precedence, and what the gate/plugin do."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robustness.config import (
    METRICS_NONE,
    ConfigError,
    RobustnessConfig,
    gate_defaults,
    load_config,
    metrics_disabled,
)
from robustness.gate import run_gate


def _project(tmp_path: Path, table: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.robustness]\n' + textwrap.dedent(table)
    )
    return tmp_path


def test_every_key_is_read_and_paths_resolve_against_the_rootdir(tmp_path):
    config = load_config(
        _project(
            tmp_path,
            """
            target = "mypkg.losses:MultiTaskLoss"
            metrics = false
            gathered_loss = "mypkg.distributed:gathered_base_loss"
            profile = "thorough"
            rules = ["C-MASK", "C-STREAM-3"]
            skip_rules = ["C-DDP"]
            known = "robustness-known.json"
            repro_dir = "out/repros"
            """,
        )
    )
    assert config.target == "mypkg.losses:MultiTaskLoss"
    assert config.metrics == METRICS_NONE
    assert metrics_disabled(config.metrics)
    assert config.gathered_loss == "mypkg.distributed:gathered_base_loss"
    assert config.profile == "thorough"
    assert config.rules == ("C-MASK", "C-STREAM-3")
    assert config.skip_rules == ("C-DDP",)
    assert config.known == tmp_path / "robustness-known.json"
    assert config.repro_dir == tmp_path / "out" / "repros"


def test_no_file_or_no_table_is_an_empty_configuration(tmp_path):
    assert load_config(tmp_path) == RobustnessConfig()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_config(tmp_path) == RobustnessConfig()


BAD_TABLES = {
    "typo": ('traget = "a:B"', r"unknown key 'traget' .*allowed: target, metrics"),
    "no-class": ('target = "mypkg.losses"', r"target = 'mypkg.losses' .*'module:Class'"),
    "int": ("target = 3", r"target = 3 is not allowed: expected a string"),
    "metrics-true": ("metrics = true", r"metrics = True .*or false"),
    "profile": ('profile = "fast"', r"profile = 'fast' .*'dev', 'ci', 'thorough'"),
    "rules-string": ('rules = "C-MASK"', r"rules = 'C-MASK' .*a list of rule ids"),
    "skip-int": ("skip_rules = [1]", r"skip_rules = \[1\] .*a list"),
    "known-bool": ("known = false", r"known = False .*a path string"),
    "gathered": ('gathered_loss = "x"', r"gathered_loss = 'x' .*'module:function'"),
}


@pytest.mark.parametrize(("table", "message"), list(BAD_TABLES.values()), ids=list(BAD_TABLES))
def test_bad_tables_are_one_line_errors_naming_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_project(tmp_path, table))
    assert "\n" not in str(info.value)
    assert "pyproject.toml" in str(info.value)


def test_invalid_toml_is_a_usage_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.robustness\n")
    with pytest.raises(ConfigError, match="cannot be read as TOML"):
        load_config(tmp_path)


def test_environment_variables_sit_between_options_and_the_table(tmp_path, monkeypatch):
    config = load_config(_project(tmp_path, 'target = "a.b:C"\nmetrics = "a.m"\nrules = ["C-X"]'))
    monkeypatch.delenv("ROBUSTNESS_METRICS", raising=False)
    monkeypatch.setenv("ROBUSTNESS_TARGET", "env.mod:Loss")
    defaults = gate_defaults(config)
    assert defaults == {"target": "env.mod:Loss", "metrics": "a.m", "rules": "C-X"}


def test_the_gate_rejects_a_bad_table_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(_project(tmp_path, 'targte = "a:B"'))
    assert run_gate([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown key 'targte'" in err


def test_gate_options_override_the_table(tmp_path, monkeypatch, capsys):
    # The table names a module that does not exist; the option names one that does not
    # either, but differently: the error names the option's, so the option won.
    monkeypatch.chdir(_project(tmp_path, 'target = "from_table.losses:Loss"'))
    monkeypatch.delenv("ROBUSTNESS_TARGET", raising=False)
    assert run_gate(["--target", "from_option.losses:Loss"]) == 2
    err = capsys.readouterr().err
    assert "from_option" in err
    assert "from_table" not in err
    assert run_gate([]) == 2
    assert "from_table" in capsys.readouterr().err


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROBUSTNESS_", "PYTEST_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_plugin_rejects_a_bad_table_as_a_usage_error(tmp_path):
    run = _pytest(_project(tmp_path, "rules = 3"), "--co", "-q")
    assert run.returncode == 4, run.stdout + run.stderr
    assert "rules = 3 is not allowed" in run.stderr


def test_the_plugin_reads_the_table_and_metrics_false_deselects_metric_rules(tmp_path):
    _project(
        tmp_path,
        """
        target = "robustness.mutants.count_keepdim:MultiTaskLoss"
        metrics = false
        profile = "thorough"
        rules = ["C-SCALAR-1", "C-STREAM-1"]
        skip_rules = ["C-SCALAR-1"]
        """,
    )
    run = _pytest(tmp_path, "--pyargs", "robustness.contract", "--co")
    out = run.stdout
    assert run.returncode == 5, out + run.stderr  # everything deselected: no tests ran
    assert "robustness: target robustness.mutants.count_keepdim:MultiTaskLoss, metrics none" in out
    assert "robustness: hypothesis profile 'thorough'" in out
    assert "C-STREAM" not in out
    assert "test_metric" not in out
    # Only loss rules remain without skip_rules: C-STREAM-1 rows are deselected, not skipped.
    run = _pytest(
        tmp_path, "--pyargs", "robustness.contract", "--co", "-q", "--robustness-skip-rules", "X"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    collected = [line for line in run.stdout.splitlines() if "::" in line]
    assert collected
    assert all("test_loss_rules.py" in line for line in collected)
