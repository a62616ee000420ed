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


def _interface_shaped_loss(**overrides):
    """A class with the loss interface's signatures (bodies irrelevant to loading)."""

    def init(
        self,
        penalty=1.0,
        nuc_penalty=1.0,
        class_weights=None,
        target_penalty=1.0,
        count_penalty=1.0,
        target_loss_type="mse",
    ):
        pass

    def method(self, prediction, truth, third):
        return None

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        return {}

    namespace = {
        "__init__": init,
        "compute_target_loss": method,
        "compute_count_loss": method,
        "compute_base_loss": method,
        "compute_nucleotide_loss": method,
        "forward": forward,
    }
    namespace.update(overrides)
    return type("Loss", (), namespace)


def test_default_targets_are_aam():
    assert load_loss_target().spec == DEFAULT_LOSS_TARGET
    assert load_metrics_target().spec == DEFAULT_METRICS_TARGET


def test_environment_variable_names_the_loss_target(monkeypatch, fake_module):
    Loss = _interface_shaped_loss()

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
    Loss = _interface_shaped_loss()

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


def _config_init(self, config):
    pass


def _two_argument_count_loss(self, prediction, truth):
    return None


def _forward_without_keywords(self, outputs, targets):
    return {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"__init__": _config_init},
            r"constructor Loss\(config\) does not take penalty, .* and requires config; "
            r"expected keyword arguments with defaults: penalty, nuc_penalty",
            id="init-config",
        ),
        pytest.param(
            {"compute_count_loss": _two_argument_count_loss},
            r"compute_count_loss\(self, prediction, truth\) cannot be called as "
            r"compute_count_loss\(self, count_prediction, counts, mask\)",
            id="count-two-args",
        ),
        pytest.param(
            {"forward": _forward_without_keywords},
            r"forward\(self, outputs, targets\) cannot be called as "
            r"forward\(self, outputs, targets, is_classifier=..., encoder_type=...\)",
            id="forward-no-keywords",
        ),
    ],
)
def test_a_loss_whose_signatures_do_not_fit_is_a_one_line_usage_error(
    fake_module, overrides, message
):
    fake_module.Loss = _interface_shaped_loss(**overrides)
    fake_module.compute_pairwise_distances = lambda e: e
    with pytest.raises(InvalidTargetError, match=message) as info:
        load_loss_target("robustness_fake_target:Loss")
    assert "\n" not in str(info.value)


def test_a_loss_taking_any_keywords_fits(fake_module):
    def init(self, **kwargs):
        pass

    fake_module.Loss = _interface_shaped_loss(__init__=init)
    fake_module.compute_pairwise_distances = lambda e: e
    assert load_loss_target("robustness_fake_target:Loss").loss_cls is fake_module.Loss


def test_a_package_that_is_not_on_the_path_says_how_to_import_it():
    with pytest.raises(InvalidTargetError, match=r"python -m pytest") as info:
        load_loss_target("robustness_no_such_package.losses:Loss")
    assert "\n" not in str(info.value)


def test_metrics_none_is_the_loss_only_target_only_where_allowed():
    from robustness.target import NO_METRICS

    assert load_metrics_target("none", allow_none=True) is NO_METRICS
    assert not NO_METRICS.enabled
    with pytest.raises(InvalidTargetError, match="none"):
        load_metrics_target("none")
