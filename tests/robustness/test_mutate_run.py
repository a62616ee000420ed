"""robustness mutate end to end on a tiny target: one rule, a handful of mutants, 1 worker.

The tiny target is aam's loss with its own ``compute_count_loss`` (the code under mutation);
only C-MASK-1 runs, so each mutant costs one or two contract tests.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from robustness.mutate.cli import run_mutate
from robustness.mutate.generation import Mutant
from robustness.mutate.running import KillOrder, mutant_profile

SELECTION = "torch.where(valid, pred.to(dtype), 0.0)"
MULTIPLICATION = "pred.to(dtype) * valid"

LOSSES = textwrap.dedent(
    """\
    import torch
    from torch import Tensor

    from aam.training.losses import MultiTaskLoss as _Base
    from aam.training.losses import _compute_dtype, _count_inputs, _mse, _pow2_scales_of
    from aam.training.losses import compute_pairwise_distances

    __all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


    class MultiTaskLoss(_Base):
        def compute_count_loss(self, count_pred: Tensor, count_true: Tensor, mask: Tensor):
            pred, true, valid = _count_inputs(count_pred, count_true, mask)
            dtype = _compute_dtype(pred, true)
            p = PREDICTION
            t = torch.where(valid, true.to(dtype), 0.0)
            return _mse(p, t, *_pow2_scales_of(valid.sum().to(dtype), squared=True))
    """
)


def _target(tmp_path: Path, prediction: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    name = f"tinycount_{abs(hash(prediction)) % 10_000}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "losses.py").write_text(LOSSES.replace("PREDICTION", prediction))
    # Spawned workers inherit the environment: they must import the tiny package too.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    return [
        "--target",
        f"{name}.losses:MultiTaskLoss",
        "--metrics",
        "aam.training.metrics",
        "--paths",
        str(package / "losses.py"),
        "--rules",
        "C-MASK-1",
        "--profile",
        "dev",
        "--workers",
        "1",
        "--quiet",
    ]


def _run(args: list[str], report: Path) -> tuple[int, dict[str, object]]:
    status = run_mutate([*args, "--report-json", str(report)])
    return status, json.loads(report.read_text())


def test_mutants_of_a_correct_count_loss_are_killed_or_survive_with_a_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _target(tmp_path, SELECTION, monkeypatch)
    operators = "selection-to-multiplication,upcast-removed"
    status, report = _run(
        [*args, "--operators", operators, "--max-mutants", "3"], tmp_path / "r.json"
    )
    mutants = {(m["operator"], m["before"]): m for m in report["mutants"]}  # type: ignore[union-attr]
    assert len(mutants) == 3, mutants
    prediction = mutants["selection-to-multiplication", "torch.where(valid, pred.to(dtype), 0.0)"]
    truth = mutants["selection-to-multiplication", "torch.where(valid, true.to(dtype), 0.0)"]
    upcast = mutants["upcast-removed", "pred.to(dtype)"]
    # garbage at padded predictions leaks through pred * mask, and (since
    # test_mutation_gaps.py) garbage at padded truths through true * mask: C-MASK-1
    assert (prediction["status"], prediction["rule"]) == ("killed", "C-MASK-1")
    assert (truth["status"], truth["rule"]) == ("killed", "C-MASK-1")
    # C-MASK-1 alone cannot see a missing upcast: a survivor, reported with its diff
    assert upcast["status"] == "survived"
    assert upcast["diff"].startswith("--- a/")
    assert "p = torch.where(valid, pred, 0.0)" in upcast["diff"]
    assert status == 1
    assert report["original"]["passes"] is True  # type: ignore[index]
    assert report["score"] == pytest.approx(2 / 3)
    assert {"id", "operator", "file", "line", "status", "rule", "diff"} <= set(prediction)
    assert "SURVIVED" not in capsys.readouterr().out  # --quiet: tables and summary only


def test_a_target_that_masks_by_multiplication_fails_first_and_is_reported_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _target(tmp_path, MULTIPLICATION, monkeypatch)
    args[args.index("C-MASK-1")] = "C-MASK-1,C-SCALAR-1"
    status, report = _run(
        [*args, "--operators", "selection-to-multiplication"], tmp_path / "r.json"
    )
    out = capsys.readouterr().out
    original = report["original"]
    assert original["passes"] is False  # type: ignore[index]
    assert original["failed_rules"] == ["C-MASK-1"]  # type: ignore[index]
    assert "original target fails C-MASK-1" in out
    mutants = report["mutants"]
    assert [m["function"] for m in mutants] == ["MultiTaskLoss.compute_count_loss"]  # type: ignore[index,union-attr]
    # the remaining selection (of the truth) turned into multiplication: never invalid, and
    # judged only by the rule the original passes (C-SCALAR-1), which cannot see it
    assert [m["status"] for m in mutants] == ["survived"]  # type: ignore[index,union-attr]
    assert status == 1


def _mutant(function: str) -> Mutant:
    return Mutant(
        id="0000000000",
        operator="guard-removed",
        generic=False,
        file="aam/training/losses.py",
        module="aam.training.losses",
        line=1,
        end_line=1,
        function=function,
        scope="function",
        original="x",
        replacement="y",
        node_index=0,
    )


def test_tests_that_killed_a_mutant_of_the_same_function_run_first() -> None:
    order = KillOrder()
    tests = ["cheap", "middle", "killer"]
    assert order.order(_mutant("f"), tests) == tests  # nothing known: select_tests order
    order.record(_mutant("f"), "killer")
    order.record(_mutant("f"), "middle")
    order.record(_mutant("f"), "killer")
    order.record(_mutant("g"), "cheap")
    assert order.order(_mutant("f"), tests) == ["killer", "middle", "cheap"]
    assert order.order(_mutant("h"), tests) == tests  # kills elsewhere do not reorder


def test_mutants_run_the_chosen_profile_without_shrinking() -> None:
    from hypothesis import Phase, settings

    name = mutant_profile("dev")
    profile, dev = settings.get_profile(name), settings.get_profile("dev")
    assert Phase.shrink in dev.phases
    assert Phase.shrink not in profile.phases
    assert Phase.explain not in profile.phases
    assert Phase.generate in profile.phases
    assert Phase.explicit in profile.phases
    assert (profile.max_examples, profile.derandomize) == (dev.max_examples, dev.derandomize)
