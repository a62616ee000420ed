"""Tests of aam.training.safety: a step on non-finite gradients never changes the parameters."""

from __future__ import annotations

import math

import pytest
import torch

from aam.training.losses import MultiTaskLoss, NonFiniteOutputError
from aam.training.safety import FiniteStepGuard, gradients_are_finite, step_if_finite

OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.1),
}


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(
        device
    )


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"


def _backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    model(x).square().sum().backward()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_step_on_nonfinite_gradients_leaves_parameters_unchanged(contract_device, bad, optimizer):
    model = _model(contract_device)
    opt = OPTIMIZERS[optimizer](model.parameters())
    _backward(model, torch.ones(5, 3, device=contract_device))
    assert step_if_finite(opt)  # a good step first, so the optimizer has state
    opt.zero_grad()
    _backward(model, torch.ones(5, 3, device=contract_device))
    model[2].bias.grad[1] = bad  # one bad entry in one of several parameters
    before = _snapshot(model)
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    assert step_if_finite(opt) is False
    _assert_unchanged(model, before)
    for param, state in opt.state.items():
        for key, value in state.items():
            assert torch.equal(value, state_before[id(param)][key]), f"optimizer {key} changed"
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_finite_gradients_are_stepped(contract_device):
    model = _model(contract_device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _snapshot(model)
    _backward(model, torch.ones(5, 3, device=contract_device))
    assert step_if_finite(opt) is True
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_huge_finite_gradients_count_as_finite(contract_device):
    # A norm-based check would overflow to inf here and wrongly refuse the step.
    grads = [
        torch.full((1000,), 3e38, device=contract_device),
        torch.ones(2, device=contract_device),
    ]
    assert gradients_are_finite(grads)
    assert not gradients_are_finite([*grads, torch.tensor([math.nan], device=contract_device)])


def test_no_gradients_at_all_is_finite(contract_device):
    model = _model(contract_device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _snapshot(model)
    assert step_if_finite(opt) is True
    _assert_unchanged(model, before)  # SGD skips parameters without gradients


def test_skipped_step_can_keep_gradients_for_inspection(contract_device):
    model = _model(contract_device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _backward(model, torch.full((2, 3), math.nan, device=contract_device))
    assert step_if_finite(opt, zero_grad_on_skip=False) is False
    assert model[0].weight.grad is not None
    assert torch.isnan(model[0].weight.grad).any()


def test_guard_counts_taken_and_skipped_steps(contract_device):
    model = _model(contract_device)
    guard = FiniteStepGuard(torch.optim.SGD(model.parameters(), lr=0.1))
    for x in (1.0, math.nan, 2.0, math.inf):
        guard.optimizer.zero_grad()
        _backward(model, torch.full((2, 3), x, device=contract_device))
        guard.step()
    assert (guard.steps_taken, guard.steps_skipped) == (2, 2)
    assert "steps_skipped=2" in repr(guard)


def test_training_with_padding_garbage_keeps_weights_finite(contract_device):
    # End to end: garbage at padded outputs never reaches a weight; a batch with a non-finite
    # valid output is refused by the loss before any gradient exists.
    torch.manual_seed(1)
    head = torch.nn.Linear(4, 1).to(contract_device)
    guard = FiniteStepGuard(torch.optim.Adam(head.parameters(), lr=0.05))
    loss_fn = MultiTaskLoss()
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], device=contract_device)
    for _ in range(5):
        features = torch.randn(2, 4, 4, device=contract_device)
        pred = head(features)  # [2, 4, 1]
        pred = torch.where(mask.unsqueeze(-1) != 0, pred, math.nan)  # garbage at padding
        counts = torch.randn(2, 4, 1, device=contract_device)
        guard.optimizer.zero_grad()
        loss_fn({"count_prediction": pred}, {"counts": counts, "mask": mask})[
            "total_loss"
        ].backward()
        assert guard.step()
    assert all(torch.isfinite(p).all() for p in head.parameters())
    before = _snapshot(head)
    pred = head(torch.randn(2, 4, 4, device=contract_device))
    bad = torch.where(torch.arange(4, device=contract_device) == 0, math.inf, pred.squeeze(-1))
    with pytest.raises(NonFiniteOutputError, match="count_loss: count_prediction has 2"):
        loss_fn({"count_prediction": bad.unsqueeze(-1)}, {"counts": counts, "mask": mask})
    _assert_unchanged(head, before)
