"""The regression guard: differential rules C-REGRESS-1..4, baselines, the approval options.

* aam against itself passes; broken variants fail with both values shown;
* every mutant of the corpus that changes what is computed on valid inputs fails a
  differential rule (see ``_NOT_DIFFERENTIAL`` for the ones that cannot);
* ``--baseline-ref`` in a throwaway git repository with two commits, through the gate.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import aam
from aam.training.losses import MultiTaskLoss
from robustness.baseline import RegressSelection, materialized, rename_imports
from robustness.contract.test_regress_rules import (
    ABSENT,
    BATCHES,
    CONSTANT,
    HALF_SQUARES,
    HUGE_COUNTS,
    NAN_PADDING,
    OFFSET,
    REMAINDER,
    SPREAD_COUNTS,
    UNEQUAL,
    _loss_examples,
)
from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    from_plain,
    resolve_qualified_name,
)
from robustness.gate import run_gate
from robustness.mutants import CORPUS, Mutant
from robustness.properties._losses import LOSS_TERMS
from robustness.properties._regress import (
    check_regress_gradients,
    check_regress_metrics,
    check_regress_outcome,
    check_regress_values,
)
from robustness.strategies._metric_data import (
    Partition,
    RegressionData,
    classification_data,
    count_data,
    partitioned,
    regression_data,
)
from robustness.target import LossTarget, load_loss_target, load_metrics_target

AAM_LOSS = "aam.training.losses:MultiTaskLoss"
AAM_METRICS = "aam.training.metrics"
LOSS_CHECKS = (check_regress_outcome, check_regress_values, check_regress_gradients)

# The ci profile's example budget without shrinking: only the verdict matters here, and the
# mutants' first failing example already shows both values.
SEARCH = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)
METRIC_CASES = st.one_of(
    partitioned(regression_data()).map(lambda c: ("regression", c)),
    partitioned(classification_data()).map(lambda c: ("classification", c)),
    partitioned(count_data()).map(lambda c: ("count", c)),
)

# Mutants whose bug lies where the differential rules do not look: invalid inputs (wrong
# shapes, out-of-range ids, bad penalties; the generated inputs are valid, so both sides
# compute the same numbers) and the cost of an update (C-STREAM-4; same numbers, slower).
# Those rules are judged by the contract itself, against no baseline.
_NOT_DIFFERENTIAL = {"C-SHAPE-1", "C-INPUT-1", "C-METRIC-INPUT-1", "C-STREAM-4", "C-DEVICE-1"}


def _loss(spec: str = AAM_LOSS) -> LossTarget:
    return load_loss_target(spec)


class _ScaledCount(MultiTaskLoss):
    """A 'harmless simplification' that changes count_loss by 0.1 %."""

    def compute_count_loss(self, count_pred, count_true, mask):
        return super().compute_count_loss(count_pred, count_true, mask) * 1.001


class _RaisesOnSingle(MultiTaskLoss):
    """A refactor that forgot remainder batches of one sample."""

    def compute_base_loss(self, base_pred, base_true, encoder_type="unifrac"):
        if base_pred.shape[0] == 1:
            raise RuntimeError("need at least two samples")
        return super().compute_base_loss(base_pred, base_true, encoder_type)


def _variant(cls: type) -> LossTarget:
    return LossTarget(f"{__name__}:{cls.__name__}", cls, _loss().pairwise_distances)


# --------------------------------------------------------------------------- the checks


# aam against itself: the dev profile's budget (the gate tests below run it through pytest).
@pytest.mark.parametrize("term", LOSS_TERMS)
@settings(SEARCH, max_examples=15)
@given(batch=BATCHES)
@example(batch=REMAINDER)
@example(batch=HUGE_COUNTS)
def test_aam_against_itself_passes_the_loss_rules(term, batch):
    for check in LOSS_CHECKS:
        check(_loss(), batch, term=term, baseline=AAM_LOSS)


@settings(SEARCH, max_examples=15)
@given(case=METRIC_CASES)
@example(case=("regression", (HALF_SQUARES, Partition((3,)))))
@example(case=("regression", UNEQUAL))
@example(case=("classification", ABSENT))
@example(case=("count", NAN_PADDING))
def test_aam_against_itself_passes_the_metric_rules(case):
    metric, (data, partition) = case
    metrics = load_metrics_target(AAM_METRICS)
    check_regress_metrics(metrics, data, metric=metric, baseline=AAM_METRICS, partition=partition)


def test_a_changed_value_fails_with_both_values():
    with pytest.raises(ContractViolation) as info:
        check_regress_values(_variant(_ScaledCount), REMAINDER, term="count_loss", baseline=_loss())
    violation = info.value
    assert violation.rule == "C-REGRESS-1"
    assert violation.term == "count_loss"
    assert "MultiTaskBatch(" in violation.details["input"]
    candidate, baseline = violation.details["candidate"], violation.details["baseline"]
    assert float(candidate.split()[0]) == pytest.approx(1.001 * float(baseline.split()[0]))
    assert violation.replay is not None
    assert violation.replay.args["baseline"] == AAM_LOSS


def test_a_differential_violation_replays_from_its_spec():
    with pytest.raises(ContractViolation) as info:
        check_regress_values(
            _variant(_ScaledCount), REMAINDER, term="count_loss", baseline=AAM_LOSS
        )
    spec = info.value.replay
    assert spec is not None
    plain = torch.load(_saved(spec.args), weights_only=True)
    with pytest.raises(ContractViolation, match="count_loss: the value differs from the baseline"):
        resolve_qualified_name(spec.check)(_variant(_ScaledCount), **from_plain(plain))


def _saved(args) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(args, buffer)
    buffer.seek(0)
    return buffer


def test_other_terms_are_unaffected_by_a_changed_count_loss():
    for term in ("target_loss", "base_loss", "nuc_loss"):
        check_regress_values(_variant(_ScaledCount), REMAINDER, term=term, baseline=AAM_LOSS)


def test_a_new_exception_fails_the_outcome_rule():
    batch = REMAINDER
    single = batch.__class__(
        outputs={
            k: v[:1, :1] if k == "base_prediction" else v[:1] for k, v in batch.outputs.items()
        },
        targets={k: v[:1, :1] if k == "base_target" else v[:1] for k, v in batch.targets.items()},
        padded={k: v[:1, :1] if k == "base_prediction" else v[:1] for k, v in batch.padded.items()},
        loss_kwargs=batch.loss_kwargs,
    )
    with pytest.raises(ContractViolation) as info:
        check_regress_outcome(
            _variant(_RaisesOnSingle), single, term="base_loss", baseline=AAM_LOSS
        )
    assert info.value.rule == "C-REGRESS-2"
    # The term is named once, by the violation, not again in the headline.
    assert str(info.value).splitlines()[0] == (
        "[C-REGRESS-2] base_loss: the candidate raises where the baseline gives a finite value"
    )
    assert "RuntimeError: need at least two samples" in info.value.details["candidate"]
    assert "(float32, shape ())" in info.value.details["baseline"]


def test_changed_metric_fails_with_both_results():
    data = RegressionData(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.5, 2.0, 2.0]))
    with pytest.raises(ContractViolation) as info:
        check_regress_metrics(
            load_metrics_target("robustness.mutants.r2_naive_variance"),
            RegressionData(data.y_pred.double() + 1e8, data.y_true.double() + 1e8, "offset"),
            metric="regression",
            baseline=AAM_METRICS,
        )
    assert info.value.rule == "C-REGRESS-4"
    assert info.value.term == "regression.r2"
    assert "r2=" in info.value.details["candidate"]
    assert "r2=" in info.value.details["baseline"]


def test_an_ignored_metric_key_is_not_compared():
    offset = RegressionData(
        torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + 1e8,
        torch.tensor([1.5, 2.0, 2.0], dtype=torch.float64) + 1e8,
        "offset",
    )
    check_regress_metrics(
        load_metrics_target("robustness.mutants.r2_naive_variance"),
        offset,
        metric="regression",
        baseline=AAM_METRICS,
        ignore=("r2",),
    )


# --------------------------------------------------------------------------- the corpus


def _differential_failure(mutant: Mutant) -> ContractViolation | None:
    """The first differential violation of ``mutant`` against aam, or None."""
    if mutant.kind == "loss":
        candidate = _loss(mutant.target)

        @SEARCH
        @given(batch=BATCHES)
        @_loss_examples
        def search(batch):
            for check in LOSS_CHECKS:
                for term in LOSS_TERMS:
                    check(candidate, batch, term=term, baseline=AAM_LOSS)

    else:
        metrics = load_metrics_target(mutant.metrics)

        @SEARCH
        @given(case=METRIC_CASES)
        @example(case=("regression", (HALF_SQUARES, Partition((3,)))))
        @example(case=("regression", UNEQUAL))
        @example(case=("classification", ABSENT))
        @example(case=("count", NAN_PADDING))
        @example(case=("count", SPREAD_COUNTS))
        @example(case=("regression", OFFSET))
        @example(case=("regression", CONSTANT))
        def search(case):
            metric, (data, partition) = case
            check_regress_metrics(
                metrics, data, metric=metric, baseline=AAM_METRICS, partition=partition
            )

    try:
        search()
    except ContractViolation as violation:
        return violation
    return None


@pytest.mark.parametrize("mutant", CORPUS, ids=lambda m: m.name)
def test_every_mutant_that_changes_values_fails_the_differential_rules(mutant):
    if mutant.rule in _NOT_DIFFERENTIAL:
        pytest.skip(f"{mutant.rule}: the bug is outside the valid inputs the rules compare on")
    violation = _differential_failure(mutant)
    assert violation is not None, f"{mutant.name} ({mutant.bug}) survived the differential rules"
    assert violation.rule.startswith("C-REGRESS-")
    assert "candidate" in violation.details
    assert "baseline" in violation.details


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize(
    ("only", "skip", "term", "compared"),
    [
        (None, None, "total_loss", True),
        (None, "count_loss", "count_loss", False),
        (None, "count_loss", "total_loss", False),
        (None, "count_loss", "target_loss", True),
        ("target_loss,base_loss", None, "count_loss", False),
        ("target_loss,base_loss", None, "target_loss", True),
        ("target_loss,base_loss", None, "total_loss", False),
        ("total_loss", None, "total_loss", True),
        ("regression.r2", None, "regression", True),
        ("regression.r2", None, "count", False),
        (None, "regression.r2", "regression", True),
    ],
)
def test_selection_compares_the_named_terms(only, skip, term, compared):
    assert RegressSelection.parse(only, skip).compares(term) is compared


def test_selection_limits_metric_keys():
    selection = RegressSelection.parse("regression.r2,count", "count.mse")
    assert selection.keys("regression") == ("r2",)
    assert selection.keys("count") is None
    assert selection.ignored("count") == ("mse",)


@pytest.mark.parametrize("bad", ["cnt_loss", "regresion", "count.", "loss"])
def test_selection_rejects_unknown_terms(bad):
    with pytest.raises(HarnessUsageError, match=f"unknown term '{bad}'"):
        RegressSelection.parse(skip=bad)


# --------------------------------------------------------------------------- materializing


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import aam.training.losses\n", "import NEW.training.losses\n"),
        ("from aam.training import losses as l\n", "from NEW.training import losses as l\n"),
        ("import torch, aam\n", "import torch, NEW\n"),
        ("x = aam.training.losses.X\n", "x = NEW.training.losses.X\n"),
        ("from other import aam\n", "from other import aam\n"),
        ("y = thing.aam\n", "y = thing.aam\n"),
        ("from . import aam_utils\n", "from . import aam_utils\n"),
        ("s = 'aam.training'\n", "s = 'aam.training'\n"),
        ("if x:\n    from aam import y\n", "if x:\n    from NEW import y\n"),
    ],
)
def test_rename_imports(source, expected):
    assert rename_imports(source, "aam", "NEW") == expected


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


DOUBLED_COUNT = """

# A 'simplification' of the count loss: it now counts every error twice.
_original_count_loss = MultiTaskLoss.compute_count_loss


def _doubled_count_loss(self, count_pred, count_true, mask):
    return 2 * _original_count_loss(self, count_pred, count_true, mask)


MultiTaskLoss.compute_count_loss = _doubled_count_loss
"""


@pytest.fixture(scope="module")
def two_commit_repo(tmp_path_factory) -> Path:
    """A git repository holding a copy of aam; the second commit doubles count_loss."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(
        Path(aam.__file__).parent, repo / "aam", ignore=shutil.ignore_patterns("__pycache__")
    )
    _git(repo, "init", "-q")
    _git(repo, "add", "aam")
    _git(repo, "commit", "-q", "-m", "aam as it was")
    losses = repo / "aam" / "training" / "losses.py"
    losses.write_text(losses.read_text() + DOUBLED_COUNT)
    _git(repo, "commit", "-q", "-am", "simplify the count loss")
    return repo


def test_materialized_imports_side_by_side_and_cleans_up(two_commit_repo):
    with materialized(
        "HEAD~1", ["aam.training.losses", "aam.training.metrics"], cwd=two_commit_repo
    ) as at:
        name = at.rename("aam.training.losses")
        assert name.startswith("aam_at_")
        old = load_loss_target(at.spec(AAM_LOSS))
        assert old.loss_cls.__module__ == name
        path = at.path
        assert path.is_dir()
    assert not path.exists()
    assert str(path) not in sys.path
    assert not [m for m in sys.modules if m.startswith(name.partition(".")[0])]


def test_materialized_cleans_up_when_the_body_raises(two_commit_repo):
    def body():
        with materialized("HEAD", ["aam.training.losses"], cwd=two_commit_repo) as at:
            seen.append(at)
            load_loss_target(at.spec(AAM_LOSS))
            raise KeyError("boom")

    seen = []
    with pytest.raises(KeyError):
        body()
    (at,) = seen
    assert not at.path.exists()
    assert not [m for m in sys.modules if m.startswith(at.packages["aam"])]


GATE = (sys.executable, "-m", "robustness", "gate")


def _gate(repo: Path, *args: str, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(repo)}  # the candidate: the repository's aam
    env.pop("CI", None)
    if tmp is not None:
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
    return subprocess.run(
        [
            *GATE,
            "--profile",
            "dev",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--rules",
            "C-REGRESS-1",
            *args,
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_gate_against_the_previous_commit_fails_on_the_changed_term(two_commit_repo, tmp_path):
    report = tmp_path / "report.json"
    done = _gate(
        two_commit_repo,
        "--baseline-ref",
        "HEAD~1",
        "--regress-only",
        "count_loss,target_loss",
        "--report-json",
        str(report),
        "--repro-dir",
        str(tmp_path / "repros"),
        tmp=tmp_path / "tmp",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout
    assert "[C-REGRESS-1] count_loss: the value differs from the baseline" in done.stdout
    assert "candidate" in done.stdout
    assert "baseline" in done.stdout
    assert "at HEAD~1 (" in done.stdout

    rows = {(r["rule"], r["term"]): r["status"] for r in json.loads(report.read_text())["rows"]}
    assert rows == {("C-REGRESS-1", "count_loss"): "FAIL", ("C-REGRESS-1", "target_loss"): "pass"}
    assert not list((tmp_path / "tmp").glob("robustness-baseline-*")), "left its files behind"


@pytest.mark.parametrize(
    "approval",
    [("--regress-only", "target_loss,base_loss,nuc_loss"), ("--regress-skip", "count_loss")],
    ids=["regress-only", "regress-skip"],
)
def test_gate_passes_once_the_changed_term_is_approved(two_commit_repo, approval, tmp_path):
    done = _gate(two_commit_repo, "--baseline-ref", "HEAD~1", *approval)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "count_loss" not in done.stdout.split("robustness gate:")[0]
    assert "total_loss" not in done.stdout.split("robustness gate:")[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--baseline-ref", "no-such-rev"), "revision 'no-such-rev' does not exist"),
        (("--baseline-ref", "HEAD", "--baseline", "aam.nope:Loss"), "did not exist at revision"),
        (("--baseline", "nope.nope:Loss"), "cannot be imported"),
        (("--baseline", AAM_LOSS, "--regress-skip", "cnt_loss"), "unknown term 'cnt_loss'"),
    ],
    ids=["bogus-ref", "module-missing-at-ref", "bogus-baseline", "unknown-term"],
)
def test_baseline_usage_errors_exit_2_with_one_line(
    two_commit_repo, monkeypatch, capsys, args, message
):
    # In process: every usage error is found before pytest starts.
    monkeypatch.chdir(two_commit_repo)
    assert run_gate(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]


def test_baseline_ref_outside_a_git_repository_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_gate(["--baseline-ref", "HEAD"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"robustness gate: error: --baseline-ref needs a git repository, but '{tmp_path}' is "
        "not inside one"
    ]


def test_no_baseline_leaves_the_regress_rules_out(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "robustness", "gate", "--rules", "C-REGRESS", "--workers", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "no contract tests selected" in done.stderr
