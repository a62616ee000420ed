import pickle

import pytest
import torch

from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    InvalidTargetError,
    ReplaySpec,
    from_plain,
    resolve_qualified_name,
    to_plain,
)


class _Case:
    def __init__(self, x: torch.Tensor, label: str) -> None:
        self.x = x
        self.label = label

    def to_plain(self):
        return {"x": self.x, "label": self.label}

    @classmethod
    def from_plain(cls, data):
        return cls(data["x"], data["label"])


def test_violation_message_names_rule_term_and_details():
    violation = ContractViolation(
        "C-MASK-1",
        "count_loss",
        "value changed when padded positions held garbage",
        details={"dtype": "float32", "positions": "(0, 3)\n(2, 4)"},
    )
    text = str(violation)
    assert text.splitlines()[0] == (
        "[C-MASK-1] count_loss: value changed when padded positions held garbage"
    )
    assert "dtype" in text
    assert "(2, 4)" in text
    assert isinstance(violation, AssertionError)


def test_violation_survives_pickling_with_its_fields():
    spec = ReplaySpec("robustness.properties:check", "loss", {"term": "count_loss"})
    violation = ContractViolation(
        "C-EMPTY-1", "nuc_loss", "not zero", details={"a": 1}, replay=spec
    )
    clone = pickle.loads(pickle.dumps(violation))
    assert (clone.rule, clone.term, clone.details, clone.replay) == (
        "C-EMPTY-1",
        "nuc_loss",
        {"a": "1"},
        spec,
    )
    assert str(clone) == str(violation)


def test_plain_round_trip_through_weights_only_load(tmp_path):
    case = _Case(torch.tensor([1.0, float("nan")]), "nan at padding")
    plain = to_plain({"case": case, "dtype": torch.bfloat16, "sizes": (1, 2), "flag": None})
    path = tmp_path / "repro.pt"
    torch.save(plain, path)
    loaded = from_plain(torch.load(path, weights_only=True))
    assert loaded["dtype"] is torch.bfloat16
    assert loaded["sizes"] == [1, 2]
    assert loaded["flag"] is None
    assert isinstance(loaded["case"], _Case)
    assert loaded["case"].label == "nan at padding"
    torch.testing.assert_close(loaded["case"].x, case.x, equal_nan=True)


def test_to_plain_refuses_what_it_cannot_replay_safely():
    with pytest.raises(HarnessUsageError, match="cannot store a set"):
        to_plain({1, 2})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("no_colon", "expected 'module:attribute'", id="no-colon"),
        pytest.param("robustness.nope:f", "cannot import module", id="missing-module"),
        pytest.param("robustness.errors:nope", "has no attribute", id="missing-attribute"),
    ],
)
def test_resolve_qualified_name_errors_are_usage_errors(name, message):
    with pytest.raises(HarnessUsageError, match=message):
        resolve_qualified_name(name)


def test_usage_errors_are_value_errors_and_violations_are_not():
    assert issubclass(InvalidTargetError, HarnessUsageError)
    assert issubclass(HarnessUsageError, ValueError)
    assert not issubclass(ContractViolation, ValueError)
