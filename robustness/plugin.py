"""The pytest plugin: target selection, device parametrization, rule bookkeeping, repro files.

Registered through the ``pytest11`` entry point, so any repository that installs this package
can run the packaged contract suite against its own implementation::

    pytest --pyargs robustness.contract --robustness-target mypkg.losses:MyLoss \
        --robustness-metrics mypkg.metrics

Options (and the environment variables that stand in for them):

* ``--robustness-target`` / ``$ROBUSTNESS_TARGET``: loss class as ``module:Class``.
* ``--robustness-metrics`` / ``$ROBUSTNESS_METRICS``: metrics module.
* ``--robustness-device`` / ``$ROBUSTNESS_DEVICE``: ``cpu``, ``cuda`` or ``all`` (default).
* ``--robustness-repro-dir`` / ``$ROBUSTNESS_REPRO_DIR``: where repro files go
  (default ``.robustness/repros``).
* ``--robustness-rules``: rule ids to run; a prefix such as ``C-REGRESS`` selects the family.

The regression guard (differential rules C-REGRESS-*, ``robustness/contract/
test_regress_rules.py``) is collected only when a baseline is configured:

* ``--robustness-baseline`` / ``$ROBUSTNESS_BASELINE``: baseline loss class ``module:Class``.
* ``--robustness-baseline-metrics`` / ``$ROBUSTNESS_BASELINE_METRICS``: baseline metrics module.
* ``--robustness-baseline-path`` / ``$ROBUSTNESS_BASELINE_PATH``: a directory put first on
  ``sys.path`` (in xdist workers too) where a baseline was materialized (the gate's
  ``--baseline-ref`` sets it).
* ``--robustness-regress-only`` / ``$ROBUSTNESS_REGRESS_ONLY`` and ``--robustness-regress-skip``
  / ``$ROBUSTNESS_REGRESS_SKIP``: comma-separated loss terms or metrics (``count_loss``,
  ``regression``, ``regression.r2``) to limit the comparison to, or to leave out.

Fixtures: ``loss_target`` (:class:`~robustness.target.LossTarget`), ``metrics_target``
(:class:`~robustness.target.MetricsTarget`), ``contract_device`` (``"cpu"``/``"cuda"``,
parametrized; cuda is skipped with a reason where it cannot run), and for the regression guard
``loss_baseline``, ``metrics_baseline`` and ``regress_selection``
(:class:`~robustness.baseline.RegressSelection`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import robustness.profiles  # noqa: F401 - registers the Hypothesis profiles before configure
from robustness.baseline import (
    BASELINE_ENV,
    BASELINE_METRICS_ENV,
    BASELINE_PATH_ENV,
    REGRESS_ONLY_ENV,
    REGRESS_SKIP_ENV,
    RegressSelection,
)
from robustness.devices import DEVICE_CHOICES, device_params
from robustness.errors import ContractViolation, HarnessUsageError
from robustness.target import (
    DEFAULT_LOSS_TARGET,
    DEFAULT_METRICS_TARGET,
    LOSS_TARGET_ENV,
    METRICS_TARGET_ENV,
    LossTarget,
    MetricsTarget,
    load_loss_target,
    load_metrics_target,
)

DEVICE_ENV = "ROBUSTNESS_DEVICE"
#: The contract module of the differential rules, collected only when a baseline is set.
REGRESS_MODULE = "test_regress_rules.py"
REPRO_DIR_ENV = "ROBUSTNESS_REPRO_DIR"
DEFAULT_REPRO_DIR = ".robustness/repros"
REPRO_FORMAT = 1


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--robustness-*`` options."""
    group = parser.getgroup("robustness", "AAM robustness contract")
    group.addoption(
        "--robustness-target",
        default=None,
        metavar="MODULE:CLASS",
        help=f"loss class under test (default: ${LOSS_TARGET_ENV}, then the built-in aam)",
    )
    group.addoption(
        "--robustness-metrics",
        default=None,
        metavar="MODULE",
        help=f"metrics module under test (default: ${METRICS_TARGET_ENV}, then aam)",
    )
    group.addoption(
        "--robustness-device",
        default=None,
        choices=DEVICE_CHOICES,
        help=f"devices to run device-generic checks on (default: ${DEVICE_ENV}, then all)",
    )
    group.addoption(
        "--robustness-rules",
        default=None,
        metavar="ID[,ID...]",
        help="run only the contract tests of these rule ids (e.g. C-MASK-1,C-MASK-2); a "
        "prefix selects a family (C-REGRESS)",
    )
    group.addoption(
        "--robustness-repro-dir",
        default=None,
        metavar="DIR",
        help=f"where violations write repro files (default: ${REPRO_DIR_ENV}, "
        f"then {DEFAULT_REPRO_DIR})",
    )
    group.addoption(
        "--robustness-baseline",
        default=None,
        metavar="MODULE:CLASS",
        help=f"baseline loss class for the differential rules C-REGRESS-1..3 "
        f"(default: ${BASELINE_ENV}; none: those rules are not collected)",
    )
    group.addoption(
        "--robustness-baseline-metrics",
        default=None,
        metavar="MODULE",
        help=f"baseline metrics module for C-REGRESS-4 (default: ${BASELINE_METRICS_ENV})",
    )
    group.addoption(
        "--robustness-baseline-path",
        default=None,
        metavar="DIR",
        help=f"directory put first on sys.path to import the baseline from "
        f"(default: ${BASELINE_PATH_ENV})",
    )
    group.addoption(
        "--robustness-regress-only",
        default=None,
        metavar="TERM[,TERM...]",
        help="compare only these loss terms / metrics with the baseline (e.g. "
        f"count_loss,regression.r2; default: ${REGRESS_ONLY_ENV}, then all)",
    )
    group.addoption(
        "--robustness-regress-skip",
        default=None,
        metavar="TERM[,TERM...]",
        help="leave these loss terms / metrics out of the comparison: an approved change "
        f"(default: ${REGRESS_SKIP_ENV})",
    )


def _option(config: pytest.Config, name: str, env: str) -> str | None:
    value = config.getoption(name) or os.environ.get(env)
    return str(value) if value else None


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``rule`` marker and fail fast on a target that cannot be used."""
    config.addinivalue_line(
        "markers", "rule(rule_id): the contract rule (e.g. C-MASK-1) a test checks"
    )
    # Also registered by pytest-xdist; repeated here so the process-group modules still
    # import with xdist disabled (the gate's --workers 0).
    config.addinivalue_line(
        "markers", "xdist_group(name): tests that must share one xdist worker (--dist loadgroup)"
    )
    device = _device_choice(config)
    if device not in DEVICE_CHOICES:
        raise pytest.UsageError(
            f"{DEVICE_ENV}={device!r} is not one of {', '.join(DEVICE_CHOICES)}"
        )
    # Only an explicitly named target is imported up front (so that installing this plugin
    # costs other projects nothing); a bad one is a usage error, not a wall of failures.
    try:
        if config.getoption("--robustness-target") or os.environ.get(LOSS_TARGET_ENV):
            config.stash[_LOSS_KEY] = load_loss_target(_loss_spec(config))
        if config.getoption("--robustness-metrics") or os.environ.get(METRICS_TARGET_ENV):
            config.stash[_METRICS_KEY] = load_metrics_target(_metrics_spec(config))
    except HarnessUsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    _configure_baseline(config)


def _configure_baseline(config: pytest.Config) -> None:
    """Put the baseline path on ``sys.path``; load the baselines and the selection up front."""
    path = _option(config, "--robustness-baseline-path", BASELINE_PATH_ENV)
    if path and path not in sys.path:
        sys.path.insert(0, path)
        config.stash[_PATH_KEY] = path
    try:
        config.stash[_SELECTION_KEY] = RegressSelection.parse(
            _option(config, "--robustness-regress-only", REGRESS_ONLY_ENV),
            _option(config, "--robustness-regress-skip", REGRESS_SKIP_ENV),
        )
        loss = _option(config, "--robustness-baseline", BASELINE_ENV)
        if loss:
            config.stash[_LOSS_BASELINE_KEY] = load_loss_target(loss)
        metrics = _option(config, "--robustness-baseline-metrics", BASELINE_METRICS_ENV)
        if metrics:
            config.stash[_METRICS_BASELINE_KEY] = load_metrics_target(metrics)
    except HarnessUsageError as exc:
        raise pytest.UsageError(f"baseline: {exc}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    """Take the baseline path back off ``sys.path``."""
    path = config.stash.get(_PATH_KEY, None)
    if path is not None and path in sys.path:
        sys.path.remove(path)


_LOSS_KEY = pytest.StashKey[LossTarget]()
_METRICS_KEY = pytest.StashKey[MetricsTarget]()
_LOSS_BASELINE_KEY = pytest.StashKey[LossTarget]()
_METRICS_BASELINE_KEY = pytest.StashKey[MetricsTarget]()
_SELECTION_KEY = pytest.StashKey[RegressSelection]()
_PATH_KEY = pytest.StashKey[str]()


def _loss_spec(config: pytest.Config) -> str | None:
    return _option(config, "--robustness-target", LOSS_TARGET_ENV)


def _metrics_spec(config: pytest.Config) -> str | None:
    return _option(config, "--robustness-metrics", METRICS_TARGET_ENV)


def _device_choice(config: pytest.Config) -> str:
    return _option(config, "--robustness-device", DEVICE_ENV) or "all"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``contract_device`` over cpu and cuda (skipped with a reason if absent)."""
    if "contract_device" in metafunc.fixturenames:
        metafunc.parametrize("contract_device", device_params(_device_choice(metafunc.config)))


@pytest.fixture(scope="session")
def loss_target(pytestconfig: pytest.Config) -> LossTarget:
    """The loss implementation under test (``--robustness-target``; default aam)."""
    if _LOSS_KEY not in pytestconfig.stash:
        pytestconfig.stash[_LOSS_KEY] = load_loss_target(_loss_spec(pytestconfig))
    return pytestconfig.stash[_LOSS_KEY]


@pytest.fixture(scope="session")
def metrics_target(pytestconfig: pytest.Config) -> MetricsTarget:
    """The metrics implementation under test (``--robustness-metrics``; default aam)."""
    if _METRICS_KEY not in pytestconfig.stash:
        pytestconfig.stash[_METRICS_KEY] = load_metrics_target(_metrics_spec(pytestconfig))
    return pytestconfig.stash[_METRICS_KEY]


@pytest.fixture(scope="session")
def loss_baseline(pytestconfig: pytest.Config) -> LossTarget:
    """The baseline loss of the differential rules (``--robustness-baseline``)."""
    if _LOSS_BASELINE_KEY not in pytestconfig.stash:
        pytest.skip("no baseline configured (--robustness-baseline)")
    return pytestconfig.stash[_LOSS_BASELINE_KEY]


@pytest.fixture(scope="session")
def metrics_baseline(pytestconfig: pytest.Config) -> MetricsTarget:
    """The baseline metrics of C-REGRESS-4 (``--robustness-baseline-metrics``)."""
    if _METRICS_BASELINE_KEY not in pytestconfig.stash:
        pytest.skip("no metrics baseline configured (--robustness-baseline-metrics)")
    return pytestconfig.stash[_METRICS_BASELINE_KEY]


@pytest.fixture(scope="session")
def regress_selection(pytestconfig: pytest.Config) -> RegressSelection:
    """Which terms and metrics the differential rules compare."""
    return pytestconfig.stash.get(_SELECTION_KEY, RegressSelection())


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the differential rules uncollected unless a baseline is configured."""
    if collection_path.name != REGRESS_MODULE or collection_path.parent.name != "contract":
        return None
    if _LOSS_BASELINE_KEY in config.stash or _METRICS_BASELINE_KEY in config.stash:
        return None
    return True


def _rule_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("rule")
    return str(marker.args[0]) if marker and marker.args else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the selected rules; record each contract test's rule id and term."""
    wanted = config.getoption("--robustness-rules")
    if wanted:
        rules = {r.strip() for r in wanted.split(",") if r.strip()}
        _deselect(config, items, lambda item: not _rule_selected(_rule_of(item), rules))
    selection = config.stash.get(_SELECTION_KEY, RegressSelection())
    _deselect(config, items, lambda item: not _regress_wanted(config, item, selection))
    for item in items:
        rule = _rule_of(item)
        if rule is None:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        term = params.get("term") or params.get("metric") or _marker_term(item)
        item.user_properties.append(("rule", rule))
        item.user_properties.append(("term", str(term) if term else "-"))
        if "contract_device" in params:
            item.user_properties.append(("device", str(params["contract_device"])))


def _deselect(
    config: pytest.Config, items: list[pytest.Item], drop: Callable[[pytest.Item], bool]
) -> None:
    deselected = [item for item in items if drop(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not drop(item)]


def _rule_selected(rule: str | None, wanted: set[str]) -> bool:
    """``rule`` is wanted by id, or by a family prefix (``C-REGRESS`` for ``C-REGRESS-1``)."""
    if rule is None:
        return False
    return rule in wanted or any(rule.startswith(f"{prefix}-") for prefix in wanted)


def _regress_wanted(config: pytest.Config, item: pytest.Item, selection: RegressSelection) -> bool:
    """Differential tests run only with their baseline and for the selected terms."""
    rule = _rule_of(item)
    if rule is None or not rule.startswith("C-REGRESS-"):
        return True
    names = getattr(item, "fixturenames", ())
    if "loss_baseline" in names and _LOSS_BASELINE_KEY not in config.stash:
        return False
    if "metrics_baseline" in names and _METRICS_BASELINE_KEY not in config.stash:
        return False
    params = getattr(getattr(item, "callspec", None), "params", {})
    term = params.get("term") or params.get("metric") or _marker_term(item)
    return term is None or selection.compares(str(term))


def _marker_term(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("rule")
    return str(marker.kwargs["term"]) if marker and "term" in marker.kwargs else None


def _violations(exc: BaseException) -> Iterator[ContractViolation]:
    if isinstance(exc, ContractViolation):
        yield exc
    elif isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _violations(inner)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Write a repro file for each violation and show the command that replays it."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if call.excinfo is None or report.when != "call":
        return
    for violation in _violations(call.excinfo.value):
        if violation.replay is None:
            continue
        path = write_repro(item.config, violation)
        command = f"python -m robustness replay {shlex.quote(str(path))}"
        report.sections.append(("robustness repro", command))
        report.user_properties.append(("repro", str(path)))
        report.user_properties.append(("violation", str(violation)))


def write_repro(config: pytest.Config, violation: ContractViolation) -> Path:
    """Save ``violation``'s replay spec as a weights-only ``torch.save`` file; return its path."""
    import torch

    assert violation.replay is not None
    directory = Path(
        config.getoption("--robustness-repro-dir")
        or os.environ.get(REPRO_DIR_ENV)
        or DEFAULT_REPRO_DIR
    )
    directory.mkdir(parents=True, exist_ok=True)
    # Record the specs as configured, without importing the other target: a metrics-only
    # run must not fail because the default loss target cannot be imported.
    loss_spec = _loss_spec(config) or DEFAULT_LOSS_TARGET
    metrics_spec = _metrics_spec(config) or DEFAULT_METRICS_TARGET
    payload = {
        "format": REPRO_FORMAT,
        "rule": violation.rule,
        "term": violation.term,
        "message": str(violation),
        "check": violation.replay.check,
        "kind": violation.replay.kind,
        "args": violation.replay.args,
        "loss_target": loss_spec,
        "metrics_target": metrics_spec,
    }
    digest = hashlib.sha1(str(violation).encode()).hexdigest()[:10]
    safe_term = "".join(c if c.isalnum() or c in "-_" else "_" for c in violation.term)
    path = directory / f"{violation.rule}-{safe_term}-{digest}.pt"
    torch.save(payload, path)
    violation.repro_path = str(path)
    return path
