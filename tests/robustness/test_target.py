import sys
import types

import pytest

from robustness.errors import InvalidTargetError
from robustness.target import (
    DEFAULT_LOSS_TARGET,
    DEFAULT_METRICS_TARGET,
    LOSS_TARGET_ENV,
    load_loss_target,
    load_metrics_target,
)


@pytest.fixture
def fake_module(monkeypatch):
    """Install a throwaway module under a unique name; return it to fill in."""
    module = types.ModuleType("robustness_fake_target")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_default_targets_are_aam():
    assert load_loss_target().spec == DEFAULT_LOSS_TARGET
    assert load_metrics_target().spec == DEFAULT_METRICS_TARGET


def test_environment_variable_names_the_loss_target(monkeypatch, fake_module):
    class Loss:
        compute_target_loss = compute_count_loss = compute_base_loss = lambda self: None
        compute_nucleotide_loss = forward = lambda self: None

    fake_module.Loss = Loss
    fake_module.compute_pairwise_distances = lambda e: e
    monkeypatch.setenv(LOSS_TARGET_ENV, "robustness_fake_target:Loss")
    assert load_loss_target().loss_cls is Loss


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("aam.training.losses", "must be 'module:Class'", id="no-class"),
        pytest.param("no_such_pkg.losses:Loss", "cannot be imported", id="missing-module"),
        pytest.param("aam.training.losses:Nope", "has no attribute 'Nope'", id="missing-class"),
        pytest.param(
            "aam.training.losses:compute_pairwise_distances", "expected a class", id="not-a-class"
        ),
        pytest.param(
            "robustness.errors:ContractViolation", "lacks required method", id="missing-methods"
        ),
    ],
)
def test_bad_loss_targets_are_one_line_usage_errors(spec, message):
    with pytest.raises(InvalidTargetError, match=message) as info:
        load_loss_target(spec)
    assert "\n" not in str(info.value)


def test_loss_target_needs_pairwise_distances_beside_the_class(fake_module):
    class Loss:
        compute_target_loss = compute_count_loss = compute_base_loss = lambda self: None
        compute_nucleotide_loss = forward = lambda self: None

    fake_module.Loss = Loss
    with pytest.raises(InvalidTargetError, match="compute_pairwise_distances"):
        load_loss_target("robustness_fake_target:Loss")


def test_loss_target_module_that_raises_on_import_is_a_usage_error(fake_module, monkeypatch):
    monkeypatch.delitem(sys.modules, fake_module.__name__)
    with pytest.raises(InvalidTargetError, match="cannot be imported: ModuleNotFoundError"):
        load_loss_target("robustness_fake_target:Loss")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("aam.training.metrics:x", "must be a module path", id="colon"),
        pytest.param("no_such_pkg.metrics", "cannot be imported", id="missing-module"),
        pytest.param("robustness.errors", "lacks compute_regression_metrics", id="wrong-module"),
    ],
)
def test_bad_metrics_targets_are_one_line_usage_errors(spec, message):
    with pytest.raises(InvalidTargetError, match=message) as info:
        load_metrics_target(spec)
    assert "\n" not in str(info.value)
