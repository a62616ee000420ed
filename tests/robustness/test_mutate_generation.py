"""robustness mutate without running the contract: operators, ids, diffs, shards, options."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robustness.errors import HarnessUsageError
from robustness.mutate.cli import run_mutate
from robustness.mutate.equivalent import load_equivalents
from robustness.mutate.generation import SourceFile, diff, mutants_of, mutated_source
from robustness.mutate.operators import OPERATORS
from robustness.mutate.sharding import merge_reports, parse_shard

FUNCTION = """\
import torch
from torch import Tensor


def loss(pred: Tensor, true: Tensor, mask: Tensor) -> Tensor:
    valid = mask != 0
    p = torch.where(valid, pred.to(torch.float64), 0.0)
    t = torch.where(valid, true, torch.zeros_like(true))
    n = valid.sum().clamp(min=1)
    return ((p - t) ** 2).sum() / n
"""


def _source(tmp_path: Path, text: str, name: str = "mod.py") -> SourceFile:
    path = tmp_path / name
    path.write_text(text)
    return SourceFile(path, name.removesuffix(".py"), name)


def _replacements(tmp_path: Path, text: str, operator: str) -> list[tuple[str, str]]:
    source = _source(tmp_path, text)
    return [(m.original, m.replacement) for m in mutants_of(source, [OPERATORS[operator]])]


@pytest.mark.parametrize(
    ("operator", "original", "replacement"),
    [
        (
            "selection-to-multiplication",
            "torch.where(valid, pred.to(torch.float64), 0.0)",
            "pred.to(torch.float64) * valid",
        ),
        (
            "selection-to-multiplication",
            "torch.where(valid, true, torch.zeros_like(true))",
            "true * valid",
        ),
        ("guard-removed", "torch.where(valid, true, torch.zeros_like(true))", "true"),
        ("guard-removed", "valid.sum().clamp(min=1)", "valid.sum()"),
        ("denominator-changed", "valid.sum()", "torch.ones_like(valid).sum()"),
        ("denominator-changed", "((p - t) ** 2).sum() / n", "((p - t) ** 2).mean() / n"),
        ("upcast-removed", "pred.to(torch.float64)", "pred"),
        ("detach-inserted", "p - t", "p.detach() - t"),
        ("constant-changed", "valid.sum().clamp(min=1)", "valid.sum().clamp(min=10)"),
        ("boundary-flipped", "mask != 0", "mask > 0"),
    ],
    ids=lambda v: v if v in OPERATORS else None,
)
def test_operator_proposes_the_documented_rewrite(
    tmp_path: Path, operator: str, original: str, replacement: str
) -> None:
    assert (original, replacement) in _replacements(tmp_path, FUNCTION, operator)


@pytest.mark.parametrize(
    ("snippet", "operator", "replacement"),
    [
        ("torch.logsumexp(x, dim=-1)", "naive-form", "torch.log(torch.exp(x).sum(dim=-1))"),
        ("x.log_softmax(-1)", "naive-form", "torch.log(torch.softmax(x, -1))"),
        ("x.sum(dim=1, keepdim=True)", "keepdim-or-squeeze", "x.sum(dim=1, keepdim=False)"),
        ("x.squeeze(-1)", "keepdim-or-squeeze", "x"),
        ("x - y", "inplace-on-input", "x.sub_(y)"),
        ("x + 1e-12", "guard-removed", "x"),
        ("x + 1e-12", "constant-changed", None),  # eps in arithmetic: guard-removed's job
    ],
)
def test_numerical_operators_on_expressions(
    tmp_path: Path, snippet: str, operator: str, replacement: str | None
) -> None:
    header = "import torch\nfrom torch import Tensor\n\n\n"
    text = f"{header}def f(x: Tensor, y: Tensor):\n    return {snippet}\n"
    found = [r for _, r in _replacements(tmp_path, text, operator)]
    assert found == ([replacement] if replacement else [])


def test_validation_raise_is_removed_and_generic_operators_are_marked(tmp_path: Path) -> None:
    text = "def f(x):\n    if x < 0:\n        raise ValueError('x')\n    return x + 1\n"
    source = _source(tmp_path, text)
    mutants = mutants_of(source)
    removed = [m for m in mutants if m.operator == "raise-removed"]
    assert [m.replacement for m in removed] == ["pass"]
    assert {m.operator for m in mutants if m.generic} == {"arithmetic-swap", "compare-swap"}


def test_ids_stay_when_unrelated_code_moves_or_is_reformatted(tmp_path: Path) -> None:
    before = {m.id: m for m in mutants_of(_source(tmp_path, FUNCTION))}
    moved = FUNCTION.replace(
        "def loss(", "def unrelated(a):\n    return a * 2\n\n\ndef loss("
    ).replace("((p - t) ** 2).sum() / n", "(\n        (p - t) ** 2\n    ).sum() / n")
    after = {m.id: m for m in mutants_of(_source(tmp_path, moved)) if m.function == "loss"}
    assert set(after) == set(before)
    assert all(after[i].line >= before[i].line for i in before)


def test_diff_is_minimal_and_the_mutated_module_compiles(tmp_path: Path) -> None:
    source = _source(tmp_path, FUNCTION)
    for mutant in mutants_of(source):
        text = diff(mutant, FUNCTION)
        changed = [
            line
            for line in text.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        assert sum(line.startswith("-") for line in changed) == 1, text
        assert sum(line.startswith("+") for line in changed) == 1, text
        compile(mutated_source(mutant, FUNCTION), "mutant", "exec")


def _list(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert run_mutate(["--list", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    return [line.split()[0] for line in lines[:-1]]


def test_list_on_aam_has_enough_mutants_stable_ids_and_exact_shards(
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = _list(capsys)
    assert len(first) >= 150
    assert first == _list(capsys)
    one, two = set(_list(capsys, "--shard", "1/2")), set(_list(capsys, "--shard", "2/2"))
    assert not one & two
    assert one | two == set(first)
    assert len(set(first)) == len(first)


def test_list_names_at_least_ten_operators_on_aam(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_mutate(["--list"]) == 0
    out = capsys.readouterr().out
    used = {line.split()[1] for line in out.splitlines()[:-1]}
    assert len(used) >= 10, used


def test_show_prints_the_diff(capsys: pytest.CaptureFixture[str]) -> None:
    mutant = _list(capsys, "--operators", "selection-to-multiplication", "--max-mutants", "1")[0]
    assert run_mutate(["--show", mutant]) == 0
    out = capsys.readouterr().out
    assert out.startswith(mutant)
    assert "+++ b/aam/training/" in out
    assert " * " in out


def test_ids_keep_exactly_the_named_mutants(capsys: pytest.CaptureFixture[str]) -> None:
    every = _list(capsys)
    wanted = [every[-1], every[0]]
    assert _list(capsys, "--ids", ",".join(wanted)) == [every[0], every[-1]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/2"], "--shard"),
        (["--shard", "x"], "--shard"),
        (["--operators", "flip-everything"], "unknown flip-everything"),
        (["--paths", "tests/robustness/test_mutate_generation.py"], "not part of the target"),
        (["--show", "0000000000"], "no mutant"),
        (["--max-mutants", "-1"], "--max-mutants"),
        (["--ids", "0000000000"], "--ids: no mutant 0000000000"),
    ],
    ids=[
        "shard-out-of-range",
        "shard-not-k-of-n",
        "unknown-operator",
        "path-outside",
        "unknown-id",
        "negative-max",
        "unknown-ids",
    ],
)
def test_bad_options_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run_mutate(["--list", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1


def test_parse_shard() -> None:
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(HarnessUsageError, match="K/N"):
        parse_shard("0/3")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


def test_since_mutates_only_the_changed_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "tinypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    body = textwrap.dedent(
        """\
        import torch


        def first(x, mask):
            return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


        def second(x, mask):
            return torch.where(mask, x, 0.0).clamp(min=0)
        """
    )
    (package / "losses.py").write_text(body)
    (package / "metrics.py").write_text("")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "start")
    (package / "losses.py").write_text(body.replace("x, 0.0).clamp(min=0)", "x, 0.0).clamp(min=1)"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [
        "--target",
        "tinypkg.losses:Loss",
        "--metrics",
        "tinypkg.metrics",
        "--paths",
        str(package / "losses.py"),
    ]
    everything = _list(capsys, *args)
    changed = _list(capsys, *args, "--since", "HEAD")
    assert 0 < len(changed) < len(everything)
    assert run_mutate(["--list", *args, "--since", "HEAD"]) == 0
    functions = {line.split()[3] for line in capsys.readouterr().out.splitlines()[:-1]}
    assert functions == {"second"}
    assert run_mutate(["--list", *args, "--since", "no-such-rev"]) == 2
    assert "unknown git revision" in capsys.readouterr().err


def _report(path: Path, mutants: list[dict[str, object]]) -> Path:
    path.write_text(
        json.dumps(
            {
                "format": 1,
                "target": "t:L",
                "metrics": "m",
                "original": {"failed_rules": []},
                "mutants": mutants,
            }
        )
    )
    return path


def _entry(mutant_id: str, status: str) -> dict[str, object]:
    return {
        "id": mutant_id,
        "operator": "guard-removed",
        "generic": False,
        "file": "f.py",
        "line": 1,
        "function": "f",
        "status": status,
        "rule": "",
        "diff": "",
    }


def test_merge_combines_shard_reports_into_one_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _report(tmp_path / "a.json", [_entry("aa", "killed"), _entry("ab", "timeout")])
    b = _report(tmp_path / "b.json", [_entry("ba", "survived"), _entry("bb", "invalid")])
    records, _ = merge_reports([a, b])
    assert [r.id for r in records] == ["aa", "ab", "ba", "bb"]
    out_json = tmp_path / "merged.json"
    assert run_mutate(["--merge", str(a), str(b), "--report-json", str(out_json)]) == 1
    merged = json.loads(out_json.read_text())
    assert merged["score"] == pytest.approx(2 / 3)
    assert len(merged["mutants"]) == 4
    assert "66.7%" in capsys.readouterr().out
    clash = _report(tmp_path / "c.json", [_entry("aa", "survived")])
    with pytest.raises(HarnessUsageError, match="aa is killed"):
        merge_reports([a, clash])


def test_equivalent_file_needs_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "eq.toml"
    path.write_text('[[equivalent]]\nid = "abc"\n')
    with pytest.raises(HarnessUsageError, match="reason"):
        load_equivalents(path)
    path.write_text('[[equivalent]]\nid = "abc"\nreason = "same value"\n')
    assert load_equivalents(path)[0].id == "abc"


def test_equivalent_entries_that_match_no_mutant_are_named_before_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import robustness.mutate.session as session

    first = _list(capsys, "--max-mutants", "1")[0]
    path = tmp_path / "eq.toml"
    path.write_text(
        f'[[equivalent]]\nid = "{first}"\nreason = "r"\n\n'
        '[[equivalent]]\nid = "0000000000"\nreason = "r"\n'
    )
    monkeypatch.setattr(session, "run_session", lambda *args: 0)
    assert run_mutate(["--equivalent", str(path), "--ids", first]) == 0
    out = capsys.readouterr().out
    assert "1 equivalent entry matches no mutant" in out
    assert "0000000000" in out
    assert first not in out


def test_the_command_is_registered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "robustness", "mutate", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "--shard" in done.stdout
