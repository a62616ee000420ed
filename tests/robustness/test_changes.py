"""``gate --changed``: a term's key follows its code, and only changed terms run again.

Every case builds a tiny target package in a temporary directory (a loss class and a metrics
module that satisfy the target interface, nothing computed), edits one term, and checks which
keys moved. Nothing here runs the contract suite, so these tests take well under a second each.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustness import changes, changes_plugin
from robustness.errors import HarnessUsageError
from robustness.gate import EXIT_OK, EXIT_USAGE, run_gate
from robustness.target import load_loss_target, load_metrics_target

LOSSES = """
def _check(x):
    return x


def compute_pairwise_distances(embeddings):
    return embeddings


class Loss:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def compute_target_loss(self, pred, true, is_classifier=False):
        return pred - true

    def compute_count_loss(self, pred, true, mask):
        return (pred - true) * mask

    def compute_base_loss(self, emb, dist, encoder_type="unifrac"):
        return compute_pairwise_distances(emb) - dist

    def compute_nucleotide_loss(self, logits, ids, mask):
        return _check(logits)

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        return (
            self.compute_target_loss(outputs, targets)
            + self.compute_count_loss(outputs, targets, 1)
            + self.compute_base_loss(outputs, targets)
            + self.compute_nucleotide_loss(outputs, targets, 1)
        )
"""

METRICS = """
class _Streaming:
    def update(self, *args):
        return None

    def compute(self):
        return {}

    def merge(self, other):
        return self

    def reset(self):
        return None


class StreamingRegressionMetrics(_Streaming):
    pass


class StreamingClassificationMetrics(_Streaming):
    pass


class StreamingCountMetrics(_Streaming):
    def update(self, pred, true, mask):
        return None


def compute_regression_metrics(pred, true):
    return {}


def compute_classification_metrics(pred, true):
    return {}


def compute_count_metrics(pred, true, mask):
    return {}
"""

_NAMES = itertools.count()


class _Package:
    """A target package ``name`` (``losses.py``, ``metrics.py``) under ``root``, importable."""

    def __init__(self, root: Path) -> None:
        self.name = f"changes_target_{next(_NAMES)}"
        self.dir = root / self.name
        self.dir.mkdir()
        (self.dir / "__init__.py").write_text("")
        self.write(LOSSES, METRICS)

    def write(self, losses: str, metrics: str) -> None:
        (self.dir / "losses.py").write_text(losses)
        (self.dir / "metrics.py").write_text(metrics)

    def edit(self, module: str, old: str, new: str) -> None:
        path = self.dir / f"{module}.py"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new))

    def load(self):
        for key in [k for k in sys.modules if k == self.name or k.startswith(f"{self.name}.")]:
            del sys.modules[key]
        return (
            load_loss_target(f"{self.name}.losses:Loss"),
            load_metrics_target(f"{self.name}.metrics"),
        )

    def keys(self) -> dict[str, str]:
        return changes.term_keys(*self.load())


@pytest.fixture
def package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return _Package(tmp_path)


def _moved(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {term for term in before if before[term] != after[term]}


def test_every_term_of_the_contract_has_a_key(package):
    assert set(package.keys()) == set(changes.LOSS_TERM_CODE) | set(changes.METRIC_TERM_CODE)


def test_keys_are_stable_when_nothing_changed(package):
    assert package.keys() == package.keys()


def test_editing_one_term_moves_its_key_and_the_total_only(package):
    before = package.keys()
    package.edit("losses", "return (pred - true) * mask", "return (pred - true) ** 2 * mask")
    # total_loss calls compute_count_loss (self.compute_count_loss): it changed too.
    assert _moved(before, package.keys()) == {"count_loss", "total_loss"}


def test_editing_a_module_level_helper_moves_the_terms_that_call_it(package):
    before = package.keys()
    package.edit("losses", "def _check(x):\n    return x", "def _check(x):\n    return -x")
    assert _moved(before, package.keys()) == {"nuc_loss", "total_loss"}


CONSTANTS = """
SCALE = 1.0
KEYS = {"a": ("x", None), "b": frozenset({"p", "q", "r"})}
UNUSED = 3


def compute_pairwise_distances(embeddings):
    return embeddings


class Loss:
    LIMIT = 10

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def compute_target_loss(self, pred, true, is_classifier=False):
        return (pred - true) * SCALE

    def compute_count_loss(self, pred, true, mask):
        return (pred - true) * mask * self.LIMIT

    def compute_base_loss(self, emb, dist, encoder_type="unifrac"):
        return emb - dist

    def compute_nucleotide_loss(self, logits, ids, mask):
        return logits[KEYS["a"][0]]

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        return 0
"""


@pytest.mark.parametrize(
    ("old", "new", "moved"),
    [
        ("SCALE = 1.0", "SCALE = 2.0", {"target_loss"}),
        ("    LIMIT = 10", "    LIMIT = 11", {"count_loss"}),
        ('("x", None)', '("x", 0)', {"nuc_loss"}),
        ("UNUSED = 3", "UNUSED = 4", set()),
    ],
    ids=["module-constant", "class-constant", "nested-dict", "unused"],
)
def test_editing_a_constant_moves_the_terms_that_read_it(package, old, new, moved):
    # A setting such as HUBER_DELTA is code too: a term that reads it must rerun when it
    # changes, or --changed passes a term it never checked. A constant no term reads moves
    # nothing.
    package.write(CONSTANTS, METRICS)
    before = package.keys()
    package.edit("losses", old, new)
    assert _moved(before, package.keys()) == moved


def test_a_set_constant_gives_the_same_key_in_every_process(package):
    # A set's order follows string hashing, which changes per process: the key must not.
    package.write(CONSTANTS, METRICS)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from robustness import changes; from robustness.target import *;"
        f"print(changes.term_keys(load_loss_target('{package.name}.losses:Loss'),"
        f" load_metrics_target('{package.name}.metrics'))['nuc_loss'])"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code, str(package.dir.parent)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(keys) == 1, keys


def test_editing_the_pairwise_distances_moves_the_base_term(package):
    before = package.keys()
    package.edit("losses", "    return embeddings", "    return embeddings * 2")
    assert _moved(before, package.keys()) == {"base_loss", "total_loss"}


def test_editing_the_constructor_moves_every_loss_term(package):
    before = package.keys()
    package.edit("losses", "self.kwargs = kwargs", "self.kwargs = dict(kwargs)")
    assert _moved(before, package.keys()) == set(changes.LOSS_TERM_CODE)


def test_editing_a_streaming_class_moves_its_metric_family_only(package):
    before = package.keys()
    package.edit(
        "metrics", "def update(self, pred, true, mask):\n        return None", "def update("
        "self, pred, true, mask):\n        return mask",
    )  # fmt: skip
    assert _moved(before, package.keys()) == {"count"}


def test_editing_a_shared_base_class_moves_every_family_using_it(package):
    before = package.keys()
    package.edit("metrics", "return self\n", "return other\n")
    assert _moved(before, package.keys()) == {"regression", "classification", "count"}


def _all_pass(terms):
    return [{"rule": "C-X-1", "term": term, "status": "pass"} for term in terms]


def _plan(package, state, profile="dev", **kwargs):
    loss, metrics = package.load()
    return changes.plan_changes(loss, metrics, profile=profile, device="cpu", state=state, **kwargs)


def _record(package, state, rows, profile="dev"):
    loss, metrics = package.load()
    changes.record_passes(None, loss, metrics, rows, profile=profile, device="cpu", state=state)


def test_without_a_recorded_pass_every_term_runs(package, tmp_path):
    plan = _plan(package, tmp_path / "state.json")
    assert set(plan.run) == set(package.keys())
    assert not plan.unchanged


def test_after_a_pass_only_the_changed_term_runs(package, tmp_path):
    state = tmp_path / "state.json"
    _record(package, state, _all_pass(package.keys()))
    package.edit("metrics", "def compute_regression_metrics(pred, true):\n    return {}", (
        "def compute_regression_metrics(pred, true):\n    return {'n': 0}"
    ))  # fmt: skip
    plan = _plan(package, state)
    assert plan.run == ["regression"]
    assert set(plan.unchanged) == set(package.keys()) - {"regression"}
    assert all(when.startswith("the last pass (dev, ") for when in plan.unchanged.values())
    assert any("unchanged since the last pass" in line for line in plan.describe())


def test_nothing_changed_is_one_line(package, tmp_path):
    state = tmp_path / "state.json"
    _record(package, state, _all_pass(package.keys()))
    plan = _plan(package, state)
    assert plan.run == []
    assert plan.nothing_line().startswith("robustness gate: nothing changed")
    assert "\n" not in plan.nothing_line()


def test_a_pass_under_a_weaker_profile_does_not_vouch_for_a_stronger_one(package, tmp_path):
    state = tmp_path / "state.json"
    _record(package, state, _all_pass(package.keys()), profile="commit")
    assert _plan(package, state, profile="commit").run == []
    assert set(_plan(package, state, profile="ci").run) == set(package.keys())


def test_a_failing_term_loses_its_record(package, tmp_path):
    state = tmp_path / "state.json"
    _record(package, state, _all_pass(package.keys()))
    rows = [
        {"rule": "C-MASK-1", "term": "nuc_loss", "status": "FAIL"},
        {"rule": "C-MASK-2", "term": "nuc_loss", "status": "pass"},
    ]
    _record(package, state, rows)
    assert _plan(package, state).run == ["nuc_loss"]


def test_a_metric_key_row_counts_for_its_family(package, tmp_path):
    state = tmp_path / "state.json"
    rows = _all_pass(set(package.keys()) - {"regression"})
    _record(package, state, [*rows, {"rule": "C-STREAM-3", "term": "regression.r2",
                                     "status": "pass"}])  # fmt: skip
    assert _plan(package, state).run == []


def test_a_skipped_only_term_is_not_recorded_as_passed(package, tmp_path):
    state = tmp_path / "state.json"
    rows = _all_pass(set(package.keys()) - {"count"})
    _record(package, state, [*rows, {"rule": "C-DDP-1", "term": "count", "status": "skipped"}])
    assert _plan(package, state).run == ["count"]


def test_an_unreadable_state_file_is_a_one_line_error(package, tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(HarnessUsageError, match="delete it to start over"):
        _plan(package, state)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip


def test_since_a_revision_runs_the_terms_changed_since_then(package, tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", package.name)
    _git(tmp_path, "commit", "-q", "-m", "target")
    monkeypatch.chdir(tmp_path)
    assert _plan(package, tmp_path / "state.json", since="HEAD").run == []
    package.edit("losses", "return pred - true\n", "return true - pred\n")
    plan = _plan(package, tmp_path / "state.json", since="HEAD")
    assert set(plan.run) == {"target_loss", "total_loss"}
    assert set(plan.unchanged.values()) == {"HEAD"}


def test_since_a_revision_that_does_not_exist_is_a_usage_error(package, tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HarnessUsageError, match="--since"):
        _plan(package, tmp_path / "state.json", since="no-such-rev")


def test_gate_changed_with_nothing_changed_exits_0_with_one_line(tmp_path, capsys):
    state = tmp_path / "state.json"
    loss, metrics = load_loss_target(), load_metrics_target()
    terms = changes.term_keys(loss, metrics)
    changes.record_passes(None, loss, metrics, _all_pass(terms), profile="ci", device="all",
                          state=state)  # fmt: skip
    assert run_gate(["--changed", "--profile", "dev", "--state", str(state)]) == EXIT_OK
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith("robustness gate: nothing changed")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--since", "HEAD"], "--since REV needs --changed", id="since-alone"),
        pytest.param(["--changed", "--rules", "C-MASK-1"], "drop --rules", id="changed-rules"),
    ],
)
def test_gate_rejects_changed_option_misuse_in_one_line(argv, message, tmp_path, capsys):
    assert run_gate([*argv, "--state", str(tmp_path / "s.json")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_commit_profile_runs_explicit_examples_and_few_generated():
    from hypothesis import Phase

    from robustness.profiles import COMMIT_EXAMPLES, PROFILES

    commit = PROFILES["commit"]
    assert Phase.explicit in commit.phases
    assert Phase.generate in commit.phases
    assert commit.derandomize
    assert commit.database is None
    assert commit.max_examples == COMMIT_EXAMPLES < PROFILES["dev"].max_examples
    assert list(changes.PROFILE_STRENGTH) == ["commit", "dev", "ci", "thorough"]


class _Item:
    def __init__(self, term: str) -> None:
        self.user_properties = [("rule", "C-X-1"), ("term", term)]


class _Config:
    def __init__(self, terms: str | None) -> None:
        self.terms = terms
        self.deselected: list[_Item] = []
        self.hook = self

    def getoption(self, name, default=None):
        assert name == "--robustness-terms"
        return self.terms

    def pytest_deselected(self, items):
        self.deselected += items


def test_the_terms_option_keeps_only_the_named_terms_and_termless_tests():
    items = [_Item(t) for t in ("count_loss", "nuc_loss", "regression.r2", "count", "-")]
    config = _Config("nuc_loss,regression")
    changes_plugin.pytest_collection_modifyitems(config, items)
    assert [i.user_properties[1][1] for i in items] == ["nuc_loss", "regression.r2", "-"]
    assert [i.user_properties[1][1] for i in config.deselected] == ["count_loss", "count"]


def test_without_the_terms_option_every_test_stays():
    items = [_Item(t) for t in ("count_loss", "count")]
    changes_plugin.pytest_collection_modifyitems(_Config(None), items)
    assert len(items) == 2


@pytest.mark.parametrize(
    ("terms", "profile", "serial"),
    [
        (["count_loss"], "dev", True),
        (["count_loss", "total_loss"], "dev", False),
        # An edit to one loss term reruns it and total_loss: under commit, serial (7.1 s CPU
        # against 15.2 s with 2 workers, docs/gate-speed.md).
        (["count_loss", "total_loss"], "commit", True),
        (["total_loss"], "commit", True),
        (["count_loss", "nuc_loss", "total_loss"], "commit", False),
        (["regression", "classification"], "commit", False),
    ],
)
def test_one_term_and_the_total_run_serially_under_the_commit_profile(terms, profile, serial):
    assert changes.serial_is_faster(terms, profile=profile) is serial
