"""Known violations that ratchet: record today's failures, fail only on new or fixed ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustness.errors import HarnessUsageError
from robustness.known import KnownEntry, compare, load_known, rewrite, write_known

ROOT = Path(__file__).resolve().parents[2]

COUNT = ("C-SCALAR-1", "count_loss")
NUC = ("C-SCALAR-1", "nuc_loss")


def _entry(row, cause="cause a", reason=""):
    return KnownEntry(*row, cause, reason)


def test_a_failure_matches_an_entry_only_with_the_same_rule_term_and_cause():
    entries = [_entry(COUNT), _entry(NUC, "cause b")]
    ratchet = compare(entries, {COUNT: "cause a", NUC: "another cause"}, [COUNT, NUC])
    assert ratchet.known == {COUNT}
    assert ratchet.new == {NUC}
    assert ratchet.fixed == (_entry(NUC, "cause b"),)  # it no longer fails that way


def test_an_entry_whose_row_did_not_run_is_neither_fixed_nor_dropped():
    entries = [_entry(COUNT), _entry(NUC)]
    assert compare(entries, {}, [COUNT]).fixed == (_entry(COUNT),)
    assert rewrite(entries, {}, [COUNT]) == [_entry(NUC)]


def test_rewrite_keeps_reasons_and_sorts_stably(tmp_path):
    old = [_entry(NUC, reason="tracked in #12"), _entry(COUNT, reason="gone soon")]
    new = rewrite(old, {NUC: "cause a", ("C-MASK-1", "total_loss"): "cause c"}, [COUNT, NUC])
    assert new == [
        _entry(("C-MASK-1", "total_loss"), "cause c"),
        _entry(NUC, reason="tracked in #12"),
    ]
    path = tmp_path / "known.json"
    write_known(path, reversed(new))
    first = path.read_text()
    write_known(path, load_known(path))
    assert path.read_text() == first
    assert json.loads(first)["violations"][1] == {
        "rule": "C-SCALAR-1",
        "term": "nuc_loss",
        "cause": "cause a",
        "reason": "tracked in #12",
    }


def test_a_missing_known_file_has_no_entries(tmp_path):
    assert load_known(tmp_path / "absent.json") == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not JSON"),
        ("[]", '"violations" list'),
        ('{"violations": [1]}', "violations[0] is not an object"),
        ('{"violations": [{"rule": "C-A-1", "term": "t"}]}', "lacks a non-empty string 'cause'"),
        (
            '{"violations": [{"rule": "C-A-1", "term": "t", "cause": "c", "why": ""}]}',
            "unknown field 'why'",
        ),
        ('{"format": 7, "violations": []}', "format 7"),
        (
            '{"violations": [{"rule": "C-A-1", "term": "t", "cause": "c"},'
            ' {"rule": "C-A-1", "term": "t", "cause": "c"}]}',
            "listed twice",
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "entry-not-object",
        "missing-field",
        "unknown-field",
        "format",
        "duplicate",
    ],
)
def test_a_malformed_known_file_is_a_one_line_usage_error(tmp_path, text, why):
    path = tmp_path / "known.json"
    path.write_text(text)
    with pytest.raises(HarnessUsageError, match="is malformed") as raised:
        load_known(path)
    assert why in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_gate_exits_2_on_a_malformed_known_file(tmp_path):
    (tmp_path / "robustness-known.json").write_text("{not json")
    done = _gate(tmp_path, "--rules", "C-SCALAR-1")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "robustness-known.json" in line
    assert "is malformed" in line


def test_the_parser_exposes_known_as_dest_known():
    from robustness.gate import build_parser

    options = build_parser().parse_args(["--known", "x.json", "--write-known"])
    assert options.known == "x.json"
    assert options.write_known is True
    assert build_parser().parse_args([]).known is None


# --------------------------------------------------------------------------- end to end

# Appended to a copy of aam's losses: each a bug in one term, removable as a block.
COUNT_BUG = """
_CountFixed = MultiTaskLoss


class MultiTaskLoss(_CountFixed):  # BUG: count_loss keeps a dimension
    def compute_count_loss(self, *args, **kwargs):
        return super().compute_count_loss(*args, **kwargs).reshape(1)
"""
NUC_BUG = """
_NucFixed = MultiTaskLoss


class MultiTaskLoss(_NucFixed):  # BUG: nuc_loss keeps a dimension
    def compute_nucleotide_loss(self, *args, **kwargs):
        return super().compute_nucleotide_loss(*args, **kwargs).reshape(1)
"""


def _gate(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No target, rule or profile options: the repository's [tool.robustness] table names them.
    return subprocess.run(
        [sys.executable, "-m", "robustness", "gate", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )


# The other repository's configuration: its target, one cheap rule, the dev profile.
PYPROJECT = """[project]
name = "mylosses"
version = "0"

[tool.robustness]
target = "mylosses.losses:MultiTaskLoss"
metrics = false
profile = "dev"
rules = ["C-SCALAR-1"]
known = "robustness-known.json"
"""


def _losses(repo: Path, *bugs: str) -> None:
    source = (ROOT / "aam" / "training" / "losses.py").read_text()
    (repo / "mylosses" / "losses.py").write_text(source + "".join(bugs))


def test_known_violations_ratchet_in_another_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "mylosses").mkdir(parents=True)
    (repo / "mylosses" / "__init__.py").write_text("")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "pyproject.toml").write_text(PYPROJECT)
    gate: tuple[str, ...] = ()
    known = repo / "robustness-known.json"

    _losses(repo, COUNT_BUG)
    first = _gate(repo, *gate)
    assert first.returncode == 1, first.stdout + first.stderr
    assert not known.exists()

    written = _gate(repo, *gate, "--write-known")
    assert written.returncode == 0, written.stdout + written.stderr
    entries = json.loads(known.read_text())["violations"]
    assert {(e["rule"], e["term"]) for e in entries} == {COUNT, ("C-SCALAR-1", "total_loss")}
    for entry in entries:
        entry["reason"] = "count head fix is scheduled"
    known.write_text(json.dumps({"format": 1, "violations": entries}, indent=2))
    assert "2 known, 0 fixed" in written.stdout

    _losses(repo, COUNT_BUG, NUC_BUG)
    second = _gate(repo, *gate)
    assert second.returncode == 1, second.stdout + second.stderr
    failing = [line for line in second.stdout.splitlines() if " FAIL " in f" {line} "]
    assert [line.split()[:2] for line in failing] == [list(NUC)]
    assert "fixed: remove it" not in second.stdout
    assert _gate(repo, *gate, "--write-known").returncode == 0
    reasons = {(e["term"], e["reason"]) for e in json.loads(known.read_text())["violations"]}
    assert ("count_loss", "count head fix is scheduled") in reasons
    assert ("nuc_loss", "") in reasons

    _losses(repo)
    fixed = _gate(repo, *gate)
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr
    assert fixed.stdout.count("fixed: remove it: C-SCALAR-1") == 3
    assert "0 FAIL, 0 known, 3 fixed" in fixed.stdout
    assert _gate(repo, *gate, "--write-known").returncode == 0
    assert json.loads(known.read_text())["violations"] == []
    shutil.rmtree(repo / ".robustness", ignore_errors=True)
