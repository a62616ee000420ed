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

Fixtures: ``loss_target`` (:class:`~robustness.target.LossTarget`), ``metrics_target``
(:class:`~robustness.target.MetricsTarget`) and ``contract_device`` (``"cpu"``/``"cuda"``,
parametrized; cuda is skipped with a reason where it cannot run).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import robustness.profiles  # noqa: F401 - registers the Hypothesis profiles before configure
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
        help="run only the contract tests of these rule ids (e.g. C-MASK-1,C-MASK-2)",
    )
    group.addoption(
        "--robustness-repro-dir",
        default=None,
        metavar="DIR",
        help=f"where violations write repro files (default: ${REPRO_DIR_ENV}, "
        f"then {DEFAULT_REPRO_DIR})",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``rule`` marker and fail fast on a target that cannot be used."""
    config.addinivalue_line(
        "markers", "rule(rule_id): the contract rule (e.g. C-MASK-1) a test checks"
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


_LOSS_KEY = pytest.StashKey[LossTarget]()
_METRICS_KEY = pytest.StashKey[MetricsTarget]()


def _loss_spec(config: pytest.Config) -> str | None:
    return config.getoption("--robustness-target") or os.environ.get(LOSS_TARGET_ENV)  # type: ignore[no-any-return]


def _metrics_spec(config: pytest.Config) -> str | None:
    return config.getoption("--robustness-metrics") or os.environ.get(METRICS_TARGET_ENV)  # type: ignore[no-any-return]


def _device_choice(config: pytest.Config) -> str:
    return config.getoption("--robustness-device") or os.environ.get(DEVICE_ENV) or "all"  # type: ignore[no-any-return]


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


def _rule_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("rule")
    return str(marker.args[0]) if marker and marker.args else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the selected rules; record each contract test's rule id and term."""
    wanted = config.getoption("--robustness-rules")
    if wanted:
        rules = {r.strip() for r in wanted.split(",") if r.strip()}
        deselected = [item for item in items if _rule_of(item) not in rules]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if _rule_of(item) in rules]
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
