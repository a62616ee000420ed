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
* ``--robustness-skip-rules``: rule ids or prefixes to leave out (deselected).

Each falls back to the ``[tool.robustness]`` table of the rootdir's ``pyproject.toml``
(:mod:`robustness.config`): option, then environment variable, then that table, then the
built-in default. ``--robustness-metrics none`` (``metrics = false``) deselects every metric
rule. When a target is named, the rootdir goes first on ``sys.path`` so that a package that
is not installed imports as it does under ``python -m pytest``. Each run's repro files go to
their own folder ``<repro dir>/<run id>/``; ``<repro dir>/last`` names the latest run's folder
(``python -m robustness replay --last-failed``), and only the newest
:data:`KEEP_RUNS` run folders are kept.

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

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import sys
import time
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
from robustness.config import RobustnessConfig, load_config, metrics_disabled
from robustness.contract._row import RUNNING_TERM
from robustness.devices import DEVICE_CHOICES, device_params
from robustness.errors import ContractViolation, HarnessUsageError
from robustness.target import (
    DEFAULT_LOSS_TARGET,
    DEFAULT_METRICS_TARGET,
    LOSS_TARGET_ENV,
    METRICS_TARGET_ENV,
    NO_METRICS,
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
#: The file in the repro directory that names the latest run's folder.
LAST_RUN_FILE = "last"
#: How many run folders are kept in the repro directory (older ones are removed).
KEEP_RUNS = 10
_RUN_ID_RE = re.compile(r"^\d{8}T\d{6}-\d+$")
_RUN_ID_INPUT = "robustness_run_id"


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
        "--robustness-skip-rules",
        default=None,
        metavar="ID[,ID...]",
        help="leave out the contract tests of these rule ids or prefixes (e.g. C-DDP)",
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


def _option(
    config: pytest.Config, name: str, env: str | None, key: str | None = None
) -> str | None:
    """Option ``name``, else ``$env``, else the ``[tool.robustness]`` ``key``, else ``None``."""
    value = config.getoption(name) or (os.environ.get(env) if env else None)
    if not value and key is not None:
        project = config.stash.get(_CONFIG_KEY, None)
        value = getattr(project, key, None) if project is not None else None
        if isinstance(value, tuple):
            value = ",".join(value)
    return str(value) if value else None


def _read_project_config(config: pytest.Config) -> RobustnessConfig:
    try:
        project = load_config(config.rootpath)
    except HarnessUsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_CONFIG_KEY] = project
    return project


def _put_rootdir_on_path(config: pytest.Config) -> None:
    """Import a named target from the rootdir as ``python -m pytest`` would (cwd first)."""
    root = str(config.rootpath)
    if root not in sys.path:
        sys.path.insert(0, root)
        config.stash[_ROOT_KEY] = root


def _load_configured_targets(config: pytest.Config, project: RobustnessConfig) -> None:
    """Import the named targets up front; a bad one is a usage error, not a wall of failures."""
    named_loss = _loss_spec(config) is not None
    named_metrics = _metrics_spec(config) is not None
    if named_loss or named_metrics or project.gathered_loss:
        _put_rootdir_on_path(config)
    try:
        if named_loss:
            loss = load_loss_target(_loss_spec(config))
            if project.gathered_loss:
                loss = dataclasses.replace(loss, gathered_loss=project.gathered_loss)
            config.stash[_LOSS_KEY] = loss
        if _metrics_off(config):
            config.stash[_METRICS_KEY] = NO_METRICS
        elif named_metrics:
            config.stash[_METRICS_KEY] = load_metrics_target(_metrics_spec(config))
    except HarnessUsageError as exc:
        raise pytest.UsageError(str(exc)) from None


def _apply_profile(config: pytest.Config, project: RobustnessConfig) -> None:
    """``profile`` from ``[tool.robustness]`` unless ``--hypothesis-profile`` names one."""
    if project.profile and not config.getoption("hypothesis_profile", default=None):
        from hypothesis import settings

        settings.load_profile(project.profile)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register the ``rule`` marker, read the project configuration, check the targets."""
    project = _read_project_config(config)
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
    # costs other projects nothing).
    _load_configured_targets(config, project)
    _apply_profile(config, project)
    _configure_baseline(config)
    _configure_run(config)


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
    """Take the baseline path and the rootdir back off ``sys.path``."""
    for key in (_PATH_KEY, _ROOT_KEY):
        path = config.stash.get(key, None)
        if path is not None and path in sys.path:
            sys.path.remove(path)


_CONFIG_KEY = pytest.StashKey[RobustnessConfig]()
_ROOT_KEY = pytest.StashKey[str]()
_RUN_KEY = pytest.StashKey[str]()
_LOSS_KEY = pytest.StashKey[LossTarget]()
_METRICS_KEY = pytest.StashKey[MetricsTarget]()
_LOSS_BASELINE_KEY = pytest.StashKey[LossTarget]()
_METRICS_BASELINE_KEY = pytest.StashKey[MetricsTarget]()
_SELECTION_KEY = pytest.StashKey[RegressSelection]()
_PATH_KEY = pytest.StashKey[str]()


def _loss_spec(config: pytest.Config) -> str | None:
    return _option(config, "--robustness-target", LOSS_TARGET_ENV, "target")


def _metrics_spec(config: pytest.Config) -> str | None:
    return _option(config, "--robustness-metrics", METRICS_TARGET_ENV, "metrics")


def _metrics_off(config: pytest.Config) -> bool:
    return metrics_disabled(_metrics_spec(config))


def _repro_dir(config: pytest.Config) -> Path:
    return Path(
        _option(config, "--robustness-repro-dir", REPRO_DIR_ENV, "repro_dir") or DEFAULT_REPRO_DIR
    )


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class _XdistRunId:
    """Hands the controller's run id to every xdist worker (registered only with xdist)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_RUN_ID_INPUT] = self.run_id


def _configure_run(config: pytest.Config) -> None:
    """Give this run an id (shared with xdist workers): its repro files' folder name."""
    if _is_worker(config):
        run_id = getattr(config, "workerinput", {}).get(_RUN_ID_INPUT)
        run_id = run_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    else:
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        # xdist's hook specs are there whatever name its plugin was loaded under ("xdist" from
        # an entry point, "xdist.plugin" from the gate's hermetic PYTEST_PLUGINS).
        if hasattr(config.pluginmanager.hook, "pytest_configure_node"):
            config.pluginmanager.register(_XdistRunId(run_id), "robustness-run-id")
        config.pluginmanager.register(_RunFolder(config), "robustness-run-folder")
    config.stash[_RUN_KEY] = run_id


def run_directory(config: pytest.Config) -> Path:
    """The folder this run's repro files go to: ``<repro dir>/<run id>``."""
    return _repro_dir(config) / config.stash[_RUN_KEY]


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """Name what the contract checks: target, metrics, profile and known file."""
    project = config.stash.get(_CONFIG_KEY, RobustnessConfig())
    wanted = (
        project.present
        or _loss_spec(config)
        or _metrics_spec(config)
        or any("robustness" in str(arg) for arg in config.args)
    )
    if not wanted:
        return None
    from hypothesis import settings

    known = project.known if project.known is not None else "none (gate option --known)"
    source = f" (from {project.path})" if project.path else ""
    return [
        f"robustness: target {_loss_spec(config) or DEFAULT_LOSS_TARGET}, "
        f"metrics {_metrics_spec(config) or DEFAULT_METRICS_TARGET}{source}",
        f"robustness: hypothesis profile {settings.get_current_profile_name()!r}, "
        f"known file {known}, repro files under {_repro_dir(config)}",
    ]


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


def _rule_set(text: str | None) -> set[str]:
    return {r.strip() for r in (text or "").split(",") if r.strip()}


def _uses_metrics(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return "metrics_target" in names or "metrics_baseline" in names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the selected rules; record each contract test's rule id and term."""
    wanted = _rule_set(_option(config, "--robustness-rules", None, "rules"))
    if wanted:
        _deselect(config, items, lambda item: not _rule_selected(_rule_of(item), wanted))
    skipped = _rule_set(_option(config, "--robustness-skip-rules", None, "skip_rules"))
    if skipped:
        _deselect(config, items, lambda item: _rule_selected(_rule_of(item), skipped))
    if _metrics_off(config):
        # A loss-only project: metric rules are deselected, neither failed nor skipped.
        _deselect(config, items, lambda item: _rule_of(item) is not None and _uses_metrics(item))
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


class _RunFolder:
    """Points ``<repro dir>/last`` at this run's folder and prunes old runs (controller only).

    Registered per session; with xdist the controller sees the workers' reports, so it knows
    whether contract tests ran at all (a run of someone's own tests leaves no pointer).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.ran_contract = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if any(name == "rule" for name, _ in report.user_properties):
            self.ran_contract = True

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.ran_contract:
            return
        directory = _repro_dir(self.config)
        run_id = self.config.stash[_RUN_KEY]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / LAST_RUN_FILE).write_text(run_id + "\n", encoding="utf-8")
            runs = sorted(
                (p for p in directory.iterdir() if p.is_dir() and _RUN_ID_RE.match(p.name)),
                key=lambda p: p.name,
            )
            for old in runs[:-KEEP_RUNS]:
                if old.name != run_id:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # a read-only checkout still gets its verdict; replay takes explicit paths


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Show why contract tests were skipped when ``-rs`` does not already."""
    if "s" in getattr(terminalreporter, "reportchars", "") or "a" in getattr(
        terminalreporter, "reportchars", ""
    ):
        return
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        props = dict(getattr(report, "user_properties", []))
        if "rule" not in props:
            continue
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        key = f"{props['rule']}: {reason.removeprefix('Skipped: ')}"
        reasons[key] = reasons.get(key, 0) + 1
    if reasons:
        terminalreporter.section("robustness: skipped contract tests", sep="-")
        for reason, count in sorted(reasons.items()):
            terminalreporter.write_line(f"{count} × {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Expose the test's ``term`` parameter (:mod:`robustness.contract._row`) while it runs.

    Per-term rows judge a batch restricted to their term's head; the contract's strategies
    read the term to draw values for that head only instead of drawing every head and
    throwing the others away (most of the cost of a per-term example).
    """
    params = getattr(getattr(item, "callspec", None), "params", {})
    term = params.get("term")
    token = RUNNING_TERM.set(term if isinstance(term, str) else None)
    try:
        yield
    finally:
        RUNNING_TERM.reset(token)


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
    directory = run_directory(config)
    directory.mkdir(parents=True, exist_ok=True)
    # Record the specs as configured, without importing the other target: a metrics-only
    # run must not fail because the default loss target cannot be imported.
    loss_spec = _loss_spec(config) or DEFAULT_LOSS_TARGET
    metrics_spec = _metrics_spec(config) or DEFAULT_METRICS_TARGET
    baseline = {
        "loss_baseline": _option(config, "--robustness-baseline", BASELINE_ENV),
        "metrics_baseline": _option(config, "--robustness-baseline-metrics", BASELINE_METRICS_ENV),
        "baseline_path": _option(config, "--robustness-baseline-path", BASELINE_PATH_ENV),
    }
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
        "rootdir": str(config.rootpath),
        **{key: value for key, value in baseline.items() if value},
    }
    digest = hashlib.sha1(str(violation).encode()).hexdigest()[:10]
    safe_term = "".join(c if c.isalnum() or c in "-_" else "_" for c in violation.term)
    path = directory / f"{violation.rule}-{safe_term}-{digest}.pt"
    torch.save(payload, path)
    violation.repro_path = str(path)
    return path
