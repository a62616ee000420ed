"""Tests of aam.training.losses against float64 oracles and the contract's edge cases.

The oracles are textbook torch ops in float64 on the boolean-indexed valid subset
(``F.mse_loss``, ``F.cross_entropy``, ``F.nll_loss``, ``torch.cdist``), independent of the
selection-and-pre-scaling the implementation uses. The generated contract suite lives in
``robustness/contract``; these are the implementation's own example-based tests plus a few
Hypothesis properties.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import aam.training.losses as losses_module
from aam.training.losses import (
    MultiTaskLoss,
    NonFiniteOutputError,
    compute_pairwise_distances,
)
from robustness.devices import device_params
from robustness.tolerances import tolerance

TERMS = ("target_loss", "count_loss", "base_loss", "nuc_loss")
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
F64 = torch.float64


# ------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """A ragged batch: leaves that require grad, and the boolean valid masks of each output."""

    outputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor] = field(default_factory=dict)
    is_classifier: bool = False


def _ragged_masks(
    gen: torch.Generator, b: int, a: int, length: int, *, empty: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Count mask ``[B, A]`` (per-sample ASV counts 0..A) and nuc mask ``[B, A, L]``."""
    asvs = torch.randint(0, a + 1, (b,), generator=gen)
    asvs[0] = a  # keep at least one full sample so terms are non-trivial
    count_valid = torch.arange(a) < asvs[:, None]
    lengths = torch.randint(0, length + 1, (b, a), generator=gen)
    nuc_valid = (torch.arange(length) < lengths[..., None]) & count_valid[..., None]
    nuc_valid[0, 0, 0] = True
    if empty:
        return torch.zeros_like(count_valid), torch.zeros_like(nuc_valid)
    return count_valid, nuc_valid


def make_batch(
    *,
    b: int = 4,
    a: int = 5,
    length: int = 6,
    vocab: int = 5,
    classes: int = 3,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    classifier: bool = False,
    empty: bool = False,
    mask_dtype: torch.dtype = torch.bool,
    scale: float = 1.0,
) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    count_valid, nuc_valid = _ragged_masks(gen, b, a, length, empty=empty)

    def leaf(*shape: int, positive: bool = False) -> torch.Tensor:
        x = torch.randn(*shape, generator=gen) * scale
        x = x.abs() if positive else x
        return x.to(dtype).to(device).requires_grad_(True)

    def value(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

    if classifier:
        logits = torch.randn(b, classes, generator=gen) * 2
        target_pred = F.log_softmax(logits, dim=-1).to(dtype).to(device).requires_grad_(True)
        target = torch.randint(0, classes, (b,), generator=gen).to(device)
    else:
        target_pred, target = leaf(b, 2), value(b, 2)
    outputs = {
        "target_prediction": target_pred,
        "count_prediction": leaf(b, a, 1),
        "base_prediction": leaf(b, b, positive=True),
        "nuc_predictions": leaf(b, a, length, vocab),
    }
    targets = {
        "target": target,
        "counts": value(b, a, 1),
        "mask": count_valid.to(mask_dtype).to(device),
        "base_target": value(b, b).abs(),
        "nucleotides": torch.randint(0, vocab, (b, a, length), generator=gen).to(device),
        "nuc_mask": nuc_valid.to(mask_dtype).to(device),
    }
    valid = {
        "target_prediction": torch.ones(target_pred.shape, dtype=torch.bool, device=device),
        "count_prediction": count_valid.unsqueeze(-1).to(device),
        "base_prediction": ~torch.eye(b, dtype=torch.bool, device=device),
        "nuc_predictions": nuc_valid.unsqueeze(-1).expand(b, a, length, vocab).to(device),
    }
    return Batch(outputs, targets, valid, classifier)


def fresh(batch: Batch) -> Batch:
    """Same values, new leaves (so gradients of two runs do not accumulate)."""
    outputs = {k: v.detach().clone().requires_grad_(True) for k, v in batch.outputs.items()}
    return Batch(outputs, dict(batch.targets), batch.valid, batch.is_classifier)


def with_garbage(batch: Batch, fill: float, *, bad_ids: int = -100) -> Batch:
    """Overwrite every padded position of every output (and of the truths) with ``fill``."""
    out = fresh(batch)
    for key in ("count_prediction", "base_prediction", "nuc_predictions"):
        value = out.outputs[key].detach()
        garbage = torch.where(batch.valid[key], value, torch.full_like(value, fill))
        out.outputs[key] = garbage.requires_grad_(True)
    targets = dict(batch.targets)
    counts_valid = batch.valid["count_prediction"]
    targets["counts"] = torch.where(counts_valid, targets["counts"], fill)
    diagonal = batch.valid["base_prediction"]
    targets["base_target"] = torch.where(diagonal, targets["base_target"], fill)
    nuc_valid = targets["nuc_mask"] != 0
    targets["nucleotides"] = torch.where(nuc_valid, targets["nucleotides"], bad_ids)
    out.targets = targets
    return out


def run(loss: MultiTaskLoss, batch: Batch, **kwargs: object) -> dict[str, torch.Tensor]:
    return loss(batch.outputs, batch.targets, is_classifier=batch.is_classifier, **kwargs)


# ------------------------------------------------------------------------------ oracles


def oracle_terms(
    batch: Batch, loss: MultiTaskLoss, *, target_loss_type: str = "mse"
) -> dict[str, torch.Tensor]:
    """Every term in float64 by textbook ops on the boolean-indexed valid subset."""
    o = {k: v.detach().cpu().to(F64) for k, v in batch.outputs.items()}
    t = {k: v.detach().cpu() for k, v in batch.targets.items()}
    zero = torch.zeros((), dtype=F64)
    if batch.is_classifier:
        weights = None if loss.class_weights is None else loss.class_weights.cpu().to(F64)
        ids = t["target"].long()
        if weights is not None and float(weights[ids].sum()) == 0:
            target = zero
        else:
            target = F.nll_loss(o["target_prediction"], ids, weight=weights)
    else:
        fn = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}[target_loss_type]
        target = fn(o["target_prediction"], t["target"].to(F64))
    count_valid = t["mask"] != 0
    pred = o["count_prediction"].squeeze(-1)[count_valid]
    count = F.mse_loss(pred, t["counts"].to(F64).squeeze(-1)[count_valid]) if pred.numel() else zero
    off = ~torch.eye(o["base_prediction"].shape[0], dtype=torch.bool)
    base_pred = o["base_prediction"][off]
    base = F.mse_loss(base_pred, t["base_target"].to(F64)[off]) if base_pred.numel() else zero
    nuc_valid = t["nuc_mask"] != 0
    logits = o["nuc_predictions"][nuc_valid]
    nuc = F.cross_entropy(logits, t["nucleotides"][nuc_valid]) if logits.numel() else zero
    terms = {"target_loss": target, "count_loss": count, "base_loss": base, "nuc_loss": nuc}
    terms["total_loss"] = (
        loss.target_penalty * target
        + loss.count_penalty * count
        + loss.penalty * base
        + loss.nuc_penalty * nuc
    )
    return terms


def assert_matches(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, n: int
) -> None:
    tol = tolerance(dtype, n=max(n, 1), scale=max(1.0, float(expected.abs())))
    torch.testing.assert_close(
        actual.detach().cpu().to(F64), expected.to(F64), rtol=tol.rtol, atol=tol.atol
    )


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def all_grads(batch: Batch) -> dict[str, torch.Tensor]:
    grads = {}
    for key, leaf in batch.outputs.items():
        assert leaf.grad is not None, f"total_loss.backward() did not reach {key}"
        grads[key] = leaf.grad
    return grads


# ------------------------------------------------------------------------------ agreement


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("classifier", [False, True], ids=["regression", "classifier"])
def test_every_term_matches_float64_oracle(contract_device, dtype, classifier):
    batch = make_batch(dtype=dtype, device=contract_device, classifier=classifier)
    loss = MultiTaskLoss(penalty=0.5, nuc_penalty=2.0, target_penalty=1.5, count_penalty=0.25)
    losses = run(loss, batch)
    expected = oracle_terms(batch, loss)
    # Half inputs are computed in float32 from exactly the half values the oracle sees, so
    # the float32 tolerance applies (stricter than the contract's half tolerance).
    for term, value in losses.items():
        assert value.shape == ()
        assert value.dtype == result_dtype(dtype), term
        assert value.device.type == contract_device
        assert_matches(value, expected[term], result_dtype(dtype), n=200)


@pytest.mark.parametrize("loss_type", ["mse", "mae", "huber"])
def test_regression_target_loss_types_match_oracle(contract_device, loss_type):
    gen = torch.Generator().manual_seed(3)
    pred = (torch.randn(7, 3, generator=gen) * 2).to(contract_device)
    true = (torch.randn(7, 3, generator=gen) * 2).to(contract_device)
    loss = MultiTaskLoss(target_loss_type=loss_type)
    value = loss.compute_target_loss(pred, true)
    oracle = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}[loss_type]
    assert_matches(value, oracle(pred.cpu().to(F64), true.cpu().to(F64)), torch.float32, n=21)


@pytest.mark.parametrize("loss_type", ["mse", "mae", "huber"])
def test_regression_target_gradient_matches_oracle(contract_device, loss_type):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(6, 2, generator=gen, dtype=F64) * 2
    true = torch.randn(6, 2, generator=gen, dtype=F64) * 2
    pred = base.clone().to(contract_device).requires_grad_(True)
    MultiTaskLoss(target_loss_type=loss_type).compute_target_loss(
        pred, true.to(contract_device)
    ).backward()
    ref = base.clone().requires_grad_(True)
    {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}[loss_type](ref, true).backward()
    torch.testing.assert_close(pred.grad.cpu(), ref.grad, rtol=1e-12, atol=1e-15)


def test_class_weights_give_weighted_mean_like_nll_loss(contract_device):
    batch = make_batch(classifier=True, b=9, classes=4, device=contract_device, seed=4)
    weights = torch.tensor([0.5, 2.0, 0.0, 1.25])
    loss = MultiTaskLoss(class_weights=weights).to(contract_device)
    value = loss.compute_target_loss(
        batch.outputs["target_prediction"], batch.targets["target"], is_classifier=True
    )
    assert loss.class_weights is not None
    assert loss.class_weights.device.type == contract_device
    assert_matches(value, oracle_terms(batch, loss)["target_loss"], torch.float32, n=9)


def test_class_weights_are_a_buffer():
    loss = MultiTaskLoss(class_weights=torch.tensor([1.0, 2.0]))
    assert "class_weights" in dict(loss.named_buffers())
    assert "class_weights" in loss.state_dict()


@pytest.mark.parametrize(
    ("weights", "labels"),
    [([0.0, 0.0, 0.0], [0, 1, 2]), ([0.0, 1.0, 1.0], [0, 0, 0]), ([0.0], [0, 0])],
    ids=["all-zero", "selected-zero", "single-class-zero"],
)
def test_zero_selected_class_weights_give_exact_zero_and_finite_grads(
    contract_device, weights, labels
):
    classes = len(weights)
    log_probs = F.log_softmax(torch.randn(len(labels), classes), -1).to(contract_device)
    log_probs.requires_grad_(True)
    loss = MultiTaskLoss(class_weights=torch.tensor(weights)).to(contract_device)
    value = loss.compute_target_loss(
        log_probs, torch.tensor(labels, device=contract_device), is_classifier=True
    )
    value.backward()
    assert value.item() == 0.0
    assert log_probs.grad is not None
    assert torch.equal(log_probs.grad, torch.zeros_like(log_probs))


def test_huge_class_weights_do_not_overflow_the_weight_sum(contract_device):
    log_probs = F.log_softmax(torch.randn(4, 2), -1).to(contract_device)
    labels = torch.tensor([0, 1, 0, 1], device=contract_device)
    plain = MultiTaskLoss(class_weights=torch.tensor([1.0, 1.0]))
    huge = MultiTaskLoss(class_weights=torch.tensor([3e38, 3e38]))
    expected = plain.to(contract_device).compute_target_loss(log_probs, labels, True)
    value = huge.to(contract_device).compute_target_loss(log_probs, labels, True)
    torch.testing.assert_close(value, expected)


# ------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("fill", ["nan", "inf", "-inf", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_padding_garbage_changes_no_value_and_no_gradient(contract_device, fill, dtype):
    fill = torch.finfo(dtype).max if fill == "max" else float(fill)
    clean = make_batch(device=contract_device, dtype=dtype, seed=7)
    dirty = with_garbage(clean, fill, bad_ids=999)
    loss = MultiTaskLoss()
    clean_losses, dirty_losses = run(loss, clean), run(loss, dirty)
    clean_losses["total_loss"].backward()
    dirty_losses["total_loss"].backward()
    for term in (*TERMS, "total_loss"):
        assert torch.equal(clean_losses[term], dirty_losses[term]), term
    for key, grad in all_grads(dirty).items():
        valid = clean.valid[key]
        assert torch.isfinite(grad).all(), key
        assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid])), key
        assert torch.equal(grad[valid], clean.outputs[key].grad[valid]), key


@pytest.mark.parametrize("bad_id", [-100, -1, 5, 999])
def test_nucleotide_ids_at_padded_positions_are_ignored(contract_device, bad_id):
    batch = make_batch(device=contract_device, seed=8)
    loss = MultiTaskLoss()
    args = (batch.outputs["nuc_predictions"], batch.targets["nucleotides"])
    mask = batch.targets["nuc_mask"]
    garbage_ids = torch.where(mask, args[1], bad_id)
    assert torch.equal(
        loss.compute_nucleotide_loss(args[0], args[1], mask),
        loss.compute_nucleotide_loss(args[0], garbage_ids, mask),
    )


@pytest.mark.parametrize(
    "mask_dtype", [torch.bool, torch.int64, torch.uint8, torch.float32], ids=str
)
def test_masks_of_any_dtype_mean_nonzero_is_valid(contract_device, mask_dtype):
    reference = run(MultiTaskLoss(), make_batch(device=contract_device, seed=9))
    batch = make_batch(device=contract_device, seed=9, mask_dtype=mask_dtype)
    for term, value in run(MultiTaskLoss(), batch).items():
        assert torch.equal(value, reference[term]), term


def test_float_mask_weights_do_not_scale_the_loss(contract_device):
    batch = make_batch(device=contract_device, seed=10)
    loss = MultiTaskLoss()
    pred, true, mask = (
        batch.outputs["count_prediction"],
        batch.targets["counts"],
        batch.targets["mask"],
    )
    assert torch.equal(
        loss.compute_count_loss(pred, true, mask.float() * 0.25),
        loss.compute_count_loss(pred, true, mask),
    )


def test_all_padding_gives_exact_zero_connected_to_every_prediction(contract_device):
    batch = make_batch(device=contract_device, empty=True, b=1)
    losses = run(MultiTaskLoss(), batch)
    for term in ("count_loss", "base_loss", "nuc_loss"):
        assert losses[term].item() == 0.0, term
        assert losses[term].requires_grad, term
    losses["total_loss"].backward()
    for key, grad in all_grads(batch).items():
        if key != "target_prediction":
            assert torch.equal(grad, torch.zeros_like(grad)), key


def test_all_padding_with_nan_everywhere_is_still_zero(contract_device):
    batch = with_garbage(make_batch(device=contract_device, empty=True, b=1), math.nan)
    loss = MultiTaskLoss()
    count = loss.compute_count_loss(
        batch.outputs["count_prediction"], batch.targets["counts"], batch.targets["mask"]
    )
    nuc = loss.compute_nucleotide_loss(
        batch.outputs["nuc_predictions"], batch.targets["nucleotides"], batch.targets["nuc_mask"]
    )
    (count + nuc).backward()
    assert count.item() == 0.0
    assert nuc.item() == 0.0
    for key in ("count_prediction", "nuc_predictions"):
        grad = batch.outputs[key].grad
        assert grad is not None, key
        assert torch.equal(grad, torch.zeros_like(grad)), key


def test_single_valid_position_matches_oracle(contract_device):
    pred = torch.tensor([[[2.0], [float("nan")]], [[float("inf")], [7.0]]], device=contract_device)
    true = torch.tensor([[[0.5], [0.0]], [[0.0], [0.0]]], device=contract_device)
    mask = torch.tensor([[1, 0], [0, 0]], device=contract_device)
    value = MultiTaskLoss().compute_count_loss(pred, true, mask)
    assert value.item() == 2.25


@pytest.mark.parametrize("b", [1, 2, 3, 5], ids=lambda b: f"B={b}")
def test_every_batch_size_works_and_matches_oracle(contract_device, b):
    batch = make_batch(b=b, device=contract_device, seed=11 + b)
    loss = MultiTaskLoss()
    losses = run(loss, batch)
    expected = oracle_terms(batch, loss)
    for term, value in losses.items():
        assert value.shape == ()
        assert_matches(value, expected[term], torch.float32, n=200)
    if b == 1:
        assert losses["base_loss"].item() == 0.0


def test_wider_padding_changes_no_value(contract_device):
    batch = make_batch(device=contract_device, seed=12, b=3, a=3, length=4)
    loss = MultiTaskLoss()
    narrow = run(loss, batch)

    def pad(t: torch.Tensor, dim: int, extra: int, fill: float | bool | int) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = extra
        return torch.cat([t.detach(), torch.full(shape, fill, dtype=t.dtype, device=t.device)], dim)

    wide = Batch(
        outputs={
            "target_prediction": batch.outputs["target_prediction"],
            "count_prediction": pad(batch.outputs["count_prediction"], 1, 2, math.nan),
            "base_prediction": batch.outputs["base_prediction"],
            "nuc_predictions": pad(
                pad(batch.outputs["nuc_predictions"], 2, 3, math.inf), 1, 2, math.nan
            ),
        },
        targets={
            **batch.targets,
            "counts": pad(batch.targets["counts"], 1, 2, 0.0),
            "mask": pad(batch.targets["mask"], 1, 2, False),
            "nucleotides": pad(pad(batch.targets["nucleotides"], 2, 3, -100), 1, 2, -100),
            "nuc_mask": pad(pad(batch.targets["nuc_mask"], 2, 3, False), 1, 2, False),
        },
    )
    widened = run(loss, wide)
    for term, value in narrow.items():
        # The sum runs over a differently shaped tensor, so only rounding may differ.
        assert_matches(widened[term], value.detach().to(F64), torch.float32, n=100)


def test_unifrac_diagonal_of_prediction_is_ignored(contract_device):
    pred = torch.rand(4, 4, device=contract_device)
    true = torch.rand(4, 4, device=contract_device)
    garbage = pred.clone()
    garbage.diagonal().fill_(math.nan)
    loss = MultiTaskLoss()
    assert torch.equal(loss.compute_base_loss(pred, true), loss.compute_base_loss(garbage, true))


def test_faith_pd_base_loss_is_plain_mse(contract_device):
    pred = torch.rand(5, 1, device=contract_device)
    true = torch.rand(5, 1, device=contract_device)
    value = MultiTaskLoss().compute_base_loss(pred, true, encoder_type="faith_pd")
    assert_matches(value, F.mse_loss(pred.cpu().to(F64), true.cpu().to(F64)), torch.float32, 5)


# ------------------------------------------------------------------------------ numerics


def test_half_precision_squares_do_not_overflow(contract_device):
    # 300**2 = 9e4 overflows float16 (max 65504); the float32 result is finite.
    pred = torch.full((2, 3, 1), 300.0, dtype=torch.float16, device=contract_device)
    true = torch.full((2, 3, 1), -10.0, dtype=torch.float16, device=contract_device)
    mask = torch.ones(2, 3, device=contract_device)
    loss = MultiTaskLoss()
    count = loss.compute_count_loss(pred, true, mask)
    target = loss.compute_target_loss(pred.reshape(6, 1), true.reshape(6, 1))
    assert count.dtype == torch.float32
    assert target.dtype == torch.float32
    assert count.item() == 310.0**2
    assert target.item() == 310.0**2


def test_bfloat16_near_float32_max_is_computed_in_float32(contract_device):
    # |3e38 - (-3e38)| overflows float32; the mean over two elements, 3e38, does not.
    big = torch.tensor([[3.0e38], [0.0]], dtype=torch.bfloat16, device=contract_device)
    value = MultiTaskLoss(target_loss_type="mae").compute_target_loss(big, -big)
    expected = big.to(F64).abs().mean() * 2
    assert math.isfinite(value.item())
    assert_matches(value, expected.cpu(), torch.float32, n=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_mean_of_squares_near_sqrt_max_does_not_overflow(contract_device, dtype):
    # One difference of 1.5 * sqrt(max): its square alone overflows, the mean over 4 does not.
    big = 1.5 * math.sqrt(torch.finfo(dtype).max)
    pred = torch.tensor([big, 0.0, 1.0, 2.0], dtype=dtype).reshape(1, 4, 1)
    true = torch.zeros_like(pred)
    mask = torch.ones(1, 4)
    value = MultiTaskLoss().compute_count_loss(
        pred.to(contract_device), true.to(contract_device), mask.to(contract_device)
    )
    expected = (big / 2) ** 2 + 5.0 / 4  # Python float64, finite for both dtypes
    assert value.item() == pytest.approx(expected, rel=16 * torch.finfo(dtype).eps)


def _overflowing_square_heads(dtype: torch.dtype) -> dict[str, tuple[dict, dict, float, int]]:
    # One difference of 1.5 * sqrt(max) per term: its square alone overflows, the mean over
    # the term's n entries does not. term -> (outputs, targets, big, n).
    big = 1.5 * math.sqrt(torch.finfo(dtype).max)
    count = torch.zeros(1, 4, 1, dtype=dtype)
    count[0, 0, 0] = big
    target = torch.zeros(4, 1, dtype=dtype)
    target[0, 0] = big
    base = torch.zeros(3, 3, dtype=dtype)
    base[0, 1] = big
    return {
        "count_loss": (
            {"count_prediction": count},
            {"counts": torch.zeros_like(count), "mask": torch.ones(1, 4)},
            big,
            4,
        ),
        "target_loss": (
            {"target_prediction": target},
            {"target": torch.zeros_like(target)},
            big,
            4,
        ),
        "base_loss": ({"base_prediction": base}, {"base_target": torch.zeros_like(base)}, big, 6),
    }


@pytest.mark.parametrize("term", ["count_loss", "target_loss", "base_loss"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_a_quick_sum_that_overflows_is_retried_pre_scaled_in_forward(contract_device, dtype, term):
    # The small terms sum the squares unscaled and screen with the result: an inf from
    # finite inputs must come back as the pre-scaled mean (with its finite gradient), not as
    # inf and not as a NonFiniteOutputError.
    outputs, targets, big, n = _overflowing_square_heads(dtype)[term]
    outputs = {k: v.to(contract_device).requires_grad_() for k, v in outputs.items()}
    targets = {k: v.to(contract_device) for k, v in targets.items()}
    losses = MultiTaskLoss()(outputs, targets)
    expected = (big / math.sqrt(n)) ** 2  # Python float64, finite for both dtypes
    assert losses[term].item() == pytest.approx(expected, rel=16 * torch.finfo(dtype).eps)
    losses["total_loss"].backward()
    (grad,) = [v.grad for v in outputs.values()]
    assert grad.flatten()[grad.flatten().abs().argmax()].item() == pytest.approx(
        2 * big / n, rel=16 * torch.finfo(dtype).eps
    )


@pytest.mark.parametrize("loss_type", ["mae", "huber"])
def test_absolute_losses_at_finfo_max_stay_finite(contract_device, loss_type):
    top = torch.finfo(torch.float32).max
    pred = torch.tensor([top, 0.0], device=contract_device)
    true = torch.tensor([-top, 0.0], device=contract_device)
    value = MultiTaskLoss(target_loss_type=loss_type).compute_target_loss(pred, true)
    expected = top if loss_type == "mae" else top - 0.25
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("magnitude", [1e4, 1e30], ids=["1e4", "1e30"])
def test_extreme_logits_give_finite_loss_and_gradients(contract_device, magnitude):
    gen = torch.Generator().manual_seed(13)
    logits = (torch.randn(2, 3, 4, 5, generator=gen).sign() * magnitude).to(contract_device)
    logits.requires_grad_(True)
    ids = torch.randint(0, 5, (2, 3, 4), generator=gen).to(contract_device)
    mask = torch.ones(2, 3, 4, dtype=torch.bool, device=contract_device)
    value = MultiTaskLoss().compute_nucleotide_loss(logits, ids, mask)
    value.backward()
    expected = F.cross_entropy(logits.detach().cpu().to(F64).reshape(-1, 5), ids.cpu().reshape(-1))
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    assert_matches(value, expected, torch.float32, n=24)


def test_exact_fit_gives_exact_zero(contract_device):
    batch = make_batch(device=contract_device, seed=14)
    loss = MultiTaskLoss()
    counts, target, base = (batch.targets[k] for k in ("counts", "target", "base_target"))
    assert loss.compute_count_loss(counts.clone(), counts, batch.targets["mask"]).item() == 0.0
    assert loss.compute_target_loss(target.clone(), target).item() == 0.0
    assert loss.compute_base_loss(base.clone(), base).item() == 0.0


def test_total_is_the_penalty_weighted_sum_of_the_terms(contract_device):
    batch = make_batch(device=contract_device, seed=15)
    loss = MultiTaskLoss(penalty=0.3, nuc_penalty=0.0, target_penalty=2.0, count_penalty=1.7)
    terms = run(loss, batch)
    expected = (
        2.0 * terms["target_loss"]
        + 1.7 * terms["count_loss"]
        + 0.3 * terms["base_loss"]
        + 0.0 * terms["nuc_loss"]
    )
    assert torch.equal(terms["total_loss"], expected)


def test_zero_penalty_gives_an_exact_zero_for_a_term_that_overflowed(contract_device):
    # Found by C-REF-1 (total_loss): count predictions of 1.34e154 square to inf in float64,
    # and 0 * inf made the total NaN although the count term was switched off.
    big = torch.full((1, 3, 1), 1.3407807929942596e154, dtype=F64, device=contract_device)
    count_pred = (-big).requires_grad_()
    target_pred = torch.full((1, 1), 2.0, dtype=F64, device=contract_device, requires_grad=True)
    outputs = {"target_prediction": target_pred, "count_prediction": count_pred}
    targets = {
        "target": torch.zeros((1, 1), dtype=F64, device=contract_device),
        "counts": big,
        "mask": torch.ones((1, 3), dtype=torch.bool, device=contract_device),
    }
    terms = MultiTaskLoss(count_penalty=0.0)(outputs, targets)
    assert terms["count_loss"].item() == math.inf
    assert terms["total_loss"].item() == 4.0
    terms["total_loss"].backward()
    # The switched-off term stays connected (C-EMPTY-1) with an exact zero gradient, not NaN.
    assert count_pred.grad is not None
    assert torch.equal(count_pred.grad, torch.zeros_like(count_pred))
    assert target_pred.grad is not None
    assert torch.isfinite(target_pred.grad).all()


def test_all_zero_penalties_give_a_zero_total_that_backpropagates(contract_device):
    batch = make_batch(device=contract_device, seed=15)
    loss = MultiTaskLoss(penalty=0.0, nuc_penalty=0.0, target_penalty=0.0, count_penalty=0.0)
    terms = run(loss, batch)
    assert terms["total_loss"].item() == 0.0
    terms["total_loss"].backward()


def test_terms_are_invariant_to_permuting_samples(contract_device):
    batch = make_batch(device=contract_device, seed=16, b=5)
    perm = torch.tensor([3, 0, 4, 1, 2], device=contract_device)
    permuted = Batch(
        outputs={
            "target_prediction": batch.outputs["target_prediction"][perm],
            "count_prediction": batch.outputs["count_prediction"][perm],
            "base_prediction": batch.outputs["base_prediction"][perm][:, perm],
            "nuc_predictions": batch.outputs["nuc_predictions"][perm],
        },
        targets={
            k: (v[perm][:, perm] if k == "base_target" else v[perm])
            for k, v in batch.targets.items()
        },
    )
    loss = MultiTaskLoss()
    before, after = run(loss, batch), run(loss, permuted)
    for term, value in before.items():
        assert_matches(after[term], value.detach().cpu().to(F64), torch.float32, n=200)


def test_noncontiguous_inputs_give_the_same_values(contract_device):
    batch = make_batch(device=contract_device, seed=17)

    def strided(t: torch.Tensor) -> torch.Tensor:
        # Same values, transposed storage: .mT of a contiguous transposed copy.
        view = t.detach().mT.contiguous().mT if t.ndim >= 2 else t.detach()
        assert t.ndim < 2 or not view.is_contiguous() or min(t.shape[-2:]) == 1
        return view

    outputs = {k: strided(v) for k, v in batch.outputs.items()}
    targets = {k: strided(v) for k, v in batch.targets.items()}
    loss = MultiTaskLoss()
    before = run(loss, batch)
    after = loss(outputs, targets)
    for term, value in before.items():
        assert_matches(after[term], value.detach().cpu().to(F64), torch.float32, n=200)


def test_inputs_are_not_modified_and_predictions_not_detached(contract_device):
    batch = with_garbage(make_batch(device=contract_device, seed=18), math.nan)
    snapshot = {k: v.detach().clone() for k, v in {**batch.outputs, **batch.targets}.items()}
    versions = {k: v._version for k, v in {**batch.outputs, **batch.targets}.items()}
    losses = run(MultiTaskLoss(), batch)
    losses["total_loss"].backward()
    for key, value in {**batch.outputs, **batch.targets}.items():
        assert value._version == versions[key], f"{key} was modified in place"
        torch.testing.assert_close(value.detach(), snapshot[key], rtol=0, atol=0, equal_nan=True)
    for key, grad in all_grads(batch).items():
        valid = batch.valid[key]
        assert (grad[valid] != 0).any(), f"{key} got no gradient at valid positions"


_HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu")


def test_forward_reads_the_host_once_and_backward_never(monkeypatch):
    # A CPU proxy for "no host syncs": count the Tensor methods that read a device value back
    # to Python. Forward may read exactly once (the fused non-finite/id check of all terms).
    batch = make_batch(seed=22, classifier=True)
    loss = MultiTaskLoss(class_weights=torch.tensor([1.0, 2.0, 0.5]))
    reads: list[str] = []
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    losses = run(loss, batch)
    assert reads == ["tolist"]
    reads.clear()
    losses["total_loss"].backward()
    assert reads == []


class _TensorOps(torch.overrides.TorchFunctionMode):
    """Records the torch functions and Tensor methods called, less metadata queries."""

    METADATA = frozenset(
        {"__get__", "is_floating_point", "is_complex", "numel", "dim", "promote_types"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name not in self.METADATA:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


# Issue 13 item 3: at B = 16 a small term costs about as much per tensor op as per element,
# so these budgets are the measured counts of forward (every op of the term, the exact 0 of
# the absent heads, the total, the one host read). An op added here must pay for itself.
OP_BUDGETS = [
    pytest.param(
        {"count_prediction": (16, 32, 1)},
        {"counts": (16, 32, 1), "mask": (16, 32)},
        13,
        id="count",
    ),
    pytest.param({"target_prediction": (16, 1)}, {"target": (16, 1)}, 5, id="target"),
    pytest.param({"base_prediction": (16, 16)}, {"base_target": (16, 16)}, 9, id="base"),
]


@pytest.mark.parametrize(("outputs", "targets", "budget"), OP_BUDGETS)
def test_small_terms_forward_within_their_tensor_op_budget(outputs, targets, budget):
    gen = torch.Generator().manual_seed(24)
    out = {k: torch.randn(s, generator=gen).requires_grad_() for k, s in outputs.items()}
    tgt = {k: torch.randn(s, generator=gen) for k, s in targets.items()}
    if "mask" in tgt:
        tgt["mask"] = tgt["mask"] > 0
    loss = MultiTaskLoss()
    loss(out, tgt)  # warm-up (cached per-shape state)
    with _TensorOps() as ops:
        loss(out, tgt)
    assert len(ops.names) <= budget, ops.names


@pytest.mark.parametrize("device", device_params("cuda"))
def test_forward_syncs_once_and_backward_never_on_cuda(device):
    batch = make_batch(device=device, seed=22, classifier=True)
    loss = MultiTaskLoss(class_weights=torch.tensor([1.0, 2.0, 0.5])).to(device)
    run(loss, batch)["total_loss"].backward()  # warm-up: first calls may sync loading kernels
    batch = make_batch(device=device, seed=23, classifier=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            losses = run(loss, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses["total_loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------------------ distances


@pytest.fixture(params=["direct", "gram"])
def pairwise_form(request, monkeypatch):
    """Both forms of aam's pairwise distances, whatever the batch's size: direct differences
    (cdist) or the Gram form with recomputed close pairs. aam picks one by B²·D on the cpu
    (off the cpu: the Gram form's machinery, every pair recomputed)."""
    limit = 2**62 if request.param == "direct" else 0
    monkeypatch.setattr(losses_module, "_DIRECT_LIMIT", limit)
    return request.param


def oracle_distances(embeddings: torch.Tensor) -> torch.Tensor:
    e = embeddings.detach().cpu().to(F64)
    return torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")


@pytest.mark.usefixtures("pairwise_form")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_pairwise_distances_match_cdist(contract_device, dtype):
    gen = torch.Generator().manual_seed(19)
    emb = (torch.randn(6, 4, generator=gen) * 3).to(dtype).to(contract_device)
    distances = compute_pairwise_distances(emb)
    assert distances.shape == (6, 6)
    assert distances.dtype == result_dtype(dtype)
    assert torch.equal(
        distances.diagonal(), torch.zeros(6, device=contract_device, dtype=distances.dtype)
    )
    tol = tolerance(result_dtype(dtype), n=4, scale=10.0)
    torch.testing.assert_close(
        distances.cpu().to(F64), oracle_distances(emb), rtol=tol.rtol, atol=tol.atol
    )


@pytest.mark.usefixtures("pairwise_form")
def test_duplicate_rows_have_zero_distance_and_finite_gradient(contract_device):
    emb = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], device=contract_device)
    emb.requires_grad_(True)
    distances = compute_pairwise_distances(emb)
    distances.sum().backward()
    assert distances[0, 1].item() == 0.0
    assert distances[1, 0].item() == 0.0
    assert distances[0, 2].item() == 5.0
    assert torch.isfinite(emb.grad).all()
    # Rows 0 and 1 only get the gradient of their distance to row 2.
    torch.testing.assert_close(emb.grad[0], emb.grad[1])


@pytest.mark.usefixtures("pairwise_form")
@pytest.mark.parametrize("gap", [1e-6, 1e-20], ids=["1e-6", "1e-20"])
def test_near_duplicate_rows_report_their_distance_with_nonzero_gradient(contract_device, gap):
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64)
    emb[1, 1] = gap
    emb = emb.to(contract_device).requires_grad_(True)
    distances = compute_pairwise_distances(emb)
    distances[0, 1].backward()
    assert distances[0, 1].item() == pytest.approx(gap, rel=1e-12)
    assert emb.grad[1, 1].item() == pytest.approx(1.0)
    assert emb.grad[0, 1].item() == pytest.approx(-1.0)


@pytest.mark.usefixtures("pairwise_form")
def test_near_duplicate_rows_in_float32(contract_device):
    emb = torch.tensor([[0.5, 0.25], [0.5, 0.25 + 1e-6]], device=contract_device)
    distance = compute_pairwise_distances(emb)[0, 1].item()
    expected = float(oracle_distances(emb)[0, 1])
    assert distance == pytest.approx(expected, rel=1e-6)


@pytest.mark.usefixtures("pairwise_form")
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_near_duplicates_in_a_wide_batch_are_exact_where_the_gram_form_cancels(
    contract_device, dtype
):
    # 30 random rows plus pairs 1e-6 and 1e-3 apart far from the centre: the Gram form alone
    # gets those pairs wrong (float32: d = 0 or ~1e-3 for 1e-6); they must be recomputed.
    gen = torch.Generator().manual_seed(40)
    emb = torch.randn(34, 16, generator=gen, dtype=F64)
    emb[30:] = 50.0 + torch.randn(16, generator=gen, dtype=F64)
    emb[31, 3] += 1e-6
    emb[33, 5] += 1e-3
    emb = emb.to(dtype).to(contract_device).requires_grad_(True)
    distances = compute_pairwise_distances(emb)
    expected = oracle_distances(emb)
    tol = tolerance(dtype, n=16)
    torch.testing.assert_close(distances.detach().cpu().to(F64), expected, rtol=tol.rtol, atol=0.0)
    distances[30, 31].backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad[31].abs().max() > 0.5  # a unit direction, not a clamp


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distances_of_huge_embeddings_stay_finite(contract_device):
    emb = torch.tensor([[1e19, 1e19], [-1e19, -1e19]], device=contract_device)
    distances = compute_pairwise_distances(emb)
    assert distances[0, 1].item() == pytest.approx(math.sqrt(8) * 1e19, rel=1e-6)


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distances_near_finfo_max_are_exact_with_finite_gradients(contract_device):
    # The batch mean of rows near finfo.max overflows when summed: the Gram form's centring
    # must not turn that into NaN distances (or NaN gradients through the matrix product).
    big = torch.finfo(F64).max
    emb = torch.tensor([[big], [1.3407807929942596e154], [big * (1 - 2**-52)]], dtype=F64)
    emb = emb.to(contract_device).requires_grad_(True)
    distances = compute_pairwise_distances(emb)
    column = emb.detach().cpu()
    expected = (column - column.T).abs()  # D = 1: exact (cdist's squares would overflow)
    torch.testing.assert_close(distances.detach().cpu(), expected, rtol=1e-15, atol=0.0)
    (distances[0, 2] / big).backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distances_of_subnormal_rows_have_finite_unit_gradients(contract_device):
    # diff / scale² underflows to inf when the scale is subnormal: the scale is a constant.
    tiny = 5e-324
    emb = torch.tensor([[tiny], [-tiny]], dtype=F64, device=contract_device, requires_grad=True)
    distances = compute_pairwise_distances(emb)
    assert distances[0, 1].item() == 2 * tiny
    distances[0, 1].backward()
    assert emb.grad.flatten().tolist() == [1.0, -1.0]


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distances_propagate_nan_rather_than_zero(contract_device):
    emb = torch.tensor([[math.nan, 0.0], [0.0, 0.0]], device=contract_device)
    assert math.isnan(compute_pairwise_distances(emb)[0, 1].item())


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distances_of_a_single_sample(contract_device):
    emb = torch.randn(1, 3, device=contract_device)
    assert torch.equal(compute_pairwise_distances(emb), torch.zeros(1, 1, device=contract_device))


def _rows_with_a_recomputed_pair(device: torch.device | str) -> torch.Tensor:
    # 6 random rows plus a pair 1e-3 apart far from the centre: the Gram form flags that
    # pair (recomputed from direct differences), the others come from the matrix product.
    gen = torch.Generator().manual_seed(41)
    emb = torch.randn(8, 5, generator=gen, dtype=F64)
    emb[6:] = 20.0 + torch.randn(5, generator=gen, dtype=F64)
    emb[7, 2] += 1e-3
    return emb.to(device)


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distance_backward_passes_gradcheck(contract_device):
    # The backward is written out: finite differences check both of its parts, the Gram
    # pairs' mm-based sum and the recomputed pairs' exact unit directions.
    emb = _rows_with_a_recomputed_pair(contract_device).requires_grad_(True)
    assert torch.autograd.gradcheck(compute_pairwise_distances, (emb,))


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distances_support_double_backward(contract_device):
    emb = _rows_with_a_recomputed_pair(contract_device).requires_grad_(True)
    assert torch.autograd.gradgradcheck(compute_pairwise_distances, (emb,))


@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distance_gradient_matches_autograd_of_direct_differences(contract_device):
    gen = torch.Generator().manual_seed(42)
    emb = torch.randn(40, 16, generator=gen, dtype=F64).to(contract_device).requires_grad_(True)
    weights = torch.rand(40, 40, generator=gen, dtype=F64).to(contract_device)
    (compute_pairwise_distances(emb) * weights).sum().backward()
    reference = emb.detach().cpu().requires_grad_(True)
    diff = reference.unsqueeze(1) - reference.unsqueeze(0)
    off = ~torch.eye(40, dtype=torch.bool)
    distances = torch.where(off, torch.where(off.unsqueeze(-1), diff, 1.0).norm(dim=-1), 0.0)
    (distances * weights.cpu()).sum().backward()
    tol = tolerance(F64, n=40 * 16)
    torch.testing.assert_close(emb.grad.cpu(), reference.grad, rtol=tol.rtol, atol=tol.rtol)


@pytest.mark.usefixtures("pairwise_form")
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_base_loss_of_embeddings_equals_base_loss_of_their_distances(contract_device, dtype):
    # forward fuses the distances and the mean into one Function: same value and gradient
    # as compute_base_loss on compute_pairwise_distances, recomputed pairs and NaN at the
    # truth's diagonal included.
    emb = _rows_with_a_recomputed_pair("cpu").to(dtype).to(contract_device)
    truth = torch.rand(8, 8, dtype=F64, generator=torch.Generator().manual_seed(43))
    truth = truth.to(dtype).to(contract_device).fill_diagonal_(math.nan)
    fused_emb = emb.clone().requires_grad_(True)
    fused = MultiTaskLoss()({"embeddings": fused_emb}, {"base_target": truth})["base_loss"]
    fused.backward()
    plain_emb = emb.clone().requires_grad_(True)
    plain = MultiTaskLoss().compute_base_loss(compute_pairwise_distances(plain_emb), truth)
    plain.backward()
    tol = tolerance(result_dtype(dtype), n=8 * 7)
    torch.testing.assert_close(fused, plain, rtol=tol.rtol, atol=tol.atol)
    torch.testing.assert_close(fused_emb.grad, plain_emb.grad, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.usefixtures("pairwise_form")
def test_base_loss_of_embeddings_supports_double_backward(contract_device):
    emb = _rows_with_a_recomputed_pair(contract_device).requires_grad_(True)
    truth = torch.rand(8, 8, dtype=F64, generator=torch.Generator().manual_seed(44))

    def base(e: torch.Tensor) -> torch.Tensor:
        return MultiTaskLoss()({"embeddings": e}, {"base_target": truth.to(e.device)})["base_loss"]

    assert torch.autograd.gradcheck(base, (emb,))
    assert torch.autograd.gradgradcheck(base, (emb,))


@pytest.mark.usefixtures("pairwise_form")
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_base_loss_of_embeddings_retries_a_quick_sum_that_overflows(contract_device, dtype):
    # Rows 0 and 2 coincide, row 1 is 1.5 * sqrt(max) away; the truth gets only the pair
    # (0, 1) wrong: the quick sum (2 * big²) overflows, the mean over 6 pairs does not.
    big = 1.5 * math.sqrt(torch.finfo(dtype).max)
    emb = torch.tensor([[0.0], [big], [0.0]], dtype=dtype, device=contract_device)
    truth = compute_pairwise_distances(emb).detach().clone()
    truth[0, 1] = truth[1, 0] = 0.0
    emb.requires_grad_(True)
    loss = MultiTaskLoss()({"embeddings": emb}, {"base_target": truth})["base_loss"]
    expected = (big / math.sqrt(3)) ** 2  # 2 big² / 6, finite in Python float64
    assert loss.item() == pytest.approx(expected, rel=16 * torch.finfo(dtype).eps)
    loss.backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.usefixtures("pairwise_form")
def test_nonfinite_embeddings_of_a_single_sample_are_named_in_the_error(contract_device):
    # B = 1 has no pair, so the base loss (0) cannot screen the embeddings: their own flag
    # must.
    emb = torch.tensor([[0.0, math.nan]], device=contract_device)
    with pytest.raises(NonFiniteOutputError, match=r"^base_loss: embeddings has 1 non-finite"):
        MultiTaskLoss()({"embeddings": emb}, {"base_target": torch.zeros(1, 1, device=emb.device)})


# ------------------------------------------------------------------------------ bad inputs


def _t(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


def _ids(*shape: int, value: int = 0) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.int64)


BadCall = Callable[[MultiTaskLoss], object]

BAD_INPUTS = [
    pytest.param(
        lambda m: m.compute_base_loss(_t(4, 3), _t(4, 4)),
        ("base_loss", "(4, 3)", "(4, 4)"),
        id="base-B-by-N-against-B-by-B",
    ),
    pytest.param(
        lambda m: m.compute_base_loss(_t(4, 4), _t(3, 3)),
        ("base_loss", "(4, 4)", "(3, 3)"),
        id="base-remainder-batch-against-full-target",
    ),
    pytest.param(
        lambda m: m.compute_base_loss(_t(4, 4), _t(4, 1), "faith_pd"),
        ("base_loss", "(4, 4)", "(4, 1)"),
        id="faith-pd-given-pairwise",
    ),
    pytest.param(
        lambda m: m.compute_base_loss(_t(4, 4), _t(4, 4), "braycurtis"),
        ("base_loss", "encoder_type", "braycurtis"),
        id="unknown-encoder-type",
    ),
    pytest.param(
        lambda m: m.compute_count_loss(_t(3, 4, 1), _t(3, 4, 1), _t(3, 5)),
        ("count_loss", "(3, 5)", "(3, 4, 1)"),
        id="count-mask-wider",
    ),
    pytest.param(
        lambda m: m.compute_count_loss(_t(3, 4, 1), _t(3, 4), _t(3, 4)),
        ("count_loss", "(3, 4)", "(3, 4, 1)"),
        id="count-truth-without-trailing-1",
    ),
    pytest.param(
        lambda m: m.compute_count_loss(_t(3, 4), _t(3, 4), _t(3, 4)),
        ("count_loss", "(3, 4)", "[B, A, 1]"),
        id="count-prediction-2d",
    ),
    pytest.param(
        lambda m: m.compute_target_loss(_t(4, 1), _t(4)),
        ("target_loss", "(4, 1)", "(4,)"),
        id="target-B1-against-B",
    ),
    pytest.param(
        lambda m: m.compute_target_loss(_t(4, 3), _ids(4, 1), True),
        ("target_loss", "(4, 3)", "(4, 1)"),
        id="class-ids-B1",
    ),
    pytest.param(
        lambda m: m.compute_target_loss(_t(4, 3), _t(4), True),
        ("target_loss", "target", "integer", "float32"),
        id="class-ids-float",
    ),
    pytest.param(
        lambda m: m.compute_target_loss(_t(4, 3), _ids(4, value=3), True),
        ("target_loss", "outside [0, 3)", "= 3"),
        id="class-id-too-large",
    ),
    pytest.param(
        lambda m: m.compute_target_loss(_t(4, 3), _ids(4, value=-1), True),
        ("target_loss", "outside [0, 3)", "= -1"),
        id="class-id-negative",
    ),
    pytest.param(
        lambda m: MultiTaskLoss(class_weights=torch.ones(2)).compute_target_loss(
            _t(4, 3), _ids(4), True
        ),
        ("target_loss", "class_weights", "K=3"),
        id="class-weights-wrong-length",
    ),
    pytest.param(
        lambda m: m.compute_nucleotide_loss(_t(2, 3, 4, 5), _ids(2, 3, 5), _t(2, 3, 4)),
        ("nuc_loss", "(2, 3, 5)", "(2, 3, 4, 5)"),
        id="nuc-ids-longer",
    ),
    pytest.param(
        lambda m: m.compute_nucleotide_loss(_t(2, 3, 4, 5), _ids(2, 3, 4), _t(2, 3)),
        ("nuc_loss", "(2, 3)", "(2, 3, 4, 5)"),
        id="nuc-mask-missing-L",
    ),
    pytest.param(
        lambda m: m.compute_nucleotide_loss(
            _t(2, 3, 4, 5), _ids(2, 3, 4, value=5), _t(2, 3, 4) + 1
        ),
        ("nuc_loss", "outside [0, 5)", "= 5"),
        id="nuc-id-equal-to-vocab-at-valid",
    ),
    pytest.param(
        lambda m: m.compute_nucleotide_loss(
            _t(2, 3, 4, 5), _ids(2, 3, 4, value=-100), _t(2, 3, 4) + 1
        ),
        ("nuc_loss", "outside [0, 5)", "= -100"),
        id="nuc-ignore-index-at-valid",
    ),
    pytest.param(
        lambda m: m.compute_nucleotide_loss(_t(2, 3, 4, 5), _t(2, 3, 4), _t(2, 3, 4)),
        ("nuc_loss", "nucleotides", "integer"),
        id="nuc-ids-float",
    ),
    pytest.param(
        lambda m: m.compute_count_loss(_ids(3, 4, 1), _t(3, 4, 1), _t(3, 4)),
        ("count_loss", "count_prediction", "floating"),
        id="count-prediction-integer",
    ),
    pytest.param(
        lambda m: compute_pairwise_distances(_t(4)),
        ("embeddings", "(4,)", "[B, D]"),
        id="embeddings-1d",
    ),
    pytest.param(
        lambda m: compute_pairwise_distances(_ids(4, 2)),
        ("embeddings", "floating"),
        id="embeddings-integer",
    ),
]


@pytest.mark.parametrize(("call", "needles"), BAD_INPUTS)
def test_bad_inputs_raise_value_error_naming_term_and_shapes(call, needles):
    with pytest.raises(ValueError, match=needles[0]) as info:
        call(MultiTaskLoss())
    assert not isinstance(info.value, NonFiniteOutputError)
    for needle in needles:
        assert needle in str(info.value)


BAD_ARGUMENTS = [
    pytest.param({"penalty": -1.0}, "penalty=-1.0", id="negative-penalty"),
    pytest.param({"nuc_penalty": math.nan}, "nuc_penalty=nan", id="nan-nuc-penalty"),
    pytest.param({"target_penalty": math.inf}, "target_penalty=inf", id="inf-target-penalty"),
    pytest.param({"count_penalty": "1"}, "count_penalty='1'", id="string-count-penalty"),
    pytest.param({"class_weights": torch.ones(2, 2)}, "(2, 2)", id="class-weights-2d"),
    pytest.param({"class_weights": torch.tensor([1.0, -0.5])}, "-0.5", id="negative-weight"),
    pytest.param({"class_weights": torch.tensor([1.0, math.nan])}, "nan", id="nan-weight"),
    pytest.param({"class_weights": torch.tensor([])}, "class_weights", id="no-weights"),
    pytest.param({"target_loss_type": "rmse"}, "target_loss_type='rmse'", id="unknown-type"),
]


@pytest.mark.parametrize(("kwargs", "needle"), BAD_ARGUMENTS)
def test_bad_constructor_arguments_raise_value_error_naming_them(kwargs, needle):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name) as info:
        MultiTaskLoss(**kwargs)
    assert needle in str(info.value)


def test_integer_class_weights_are_accepted_as_floats():
    loss = MultiTaskLoss(class_weights=[1, 2, 0])
    assert loss.class_weights is not None
    assert loss.class_weights.is_floating_point()


# ------------------------------------------------------------------------------ non-finite


def test_nonfinite_count_prediction_message_names_term_key_count_and_first_index():
    pred = torch.zeros(3, 4, 1)
    pred[0, 2, 0] = math.nan
    pred[1, 0, 0] = math.inf
    pred[2, 3, 0] = -math.inf
    with pytest.raises(NonFiniteOutputError) as info:
        MultiTaskLoss().compute_count_loss(pred, torch.zeros(3, 4, 1), torch.ones(3, 4))
    assert str(info.value).startswith(
        "count_loss: count_prediction has 3 non-finite value(s) at valid positions "
        "(of 12 valid); first at (0, 2, 0) = nan"
    )
    error = info.value
    assert (error.term, error.key, error.count, error.valid) == (
        "count_loss",
        "count_prediction",
        3,
        12,
    )
    assert error.index == (0, 2, 0)
    assert math.isnan(error.value)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int32], ids=str)
def test_small_integer_ids_are_range_checked_without_wrapping(dtype):
    logits = torch.zeros(1, 1, 2, 300)
    ids = torch.tensor([[[5, 100]]], dtype=dtype)
    mask = torch.ones(1, 1, 2)
    value = MultiTaskLoss().compute_nucleotide_loss(logits, ids, mask)
    assert value.item() == pytest.approx(math.log(300))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        MultiTaskLoss().compute_nucleotide_loss(logits[..., :3], ids, mask)


def test_nonfinite_message_counts_only_valid_positions(contract_device):
    pred = torch.zeros(2, 4, 1, device=contract_device)
    pred[0, 1, 0] = math.inf
    pred[1, 3, 0] = math.nan  # padded: neither counted nor reported
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], device=contract_device)
    with pytest.raises(NonFiniteOutputError) as info:
        MultiTaskLoss().compute_count_loss(pred, torch.zeros_like(pred), mask)
    assert "has 1 non-finite value(s) at valid positions (of 5 valid)" in str(info.value)
    assert "first at (0, 1, 0) = inf" in str(info.value)


NONFINITE_CASES = [
    pytest.param("count_loss", "counts", -math.inf, id="count-truth"),
    pytest.param("base_loss", "base_prediction", math.nan, id="base-off-diagonal"),
    pytest.param("base_loss", "base_target", math.inf, id="base-target"),
    pytest.param("nuc_loss", "nuc_predictions", math.nan, id="nuc-logit"),
    pytest.param("target_loss", "target_prediction", math.inf, id="target-prediction"),
    pytest.param("target_loss", "target", math.nan, id="target-truth"),
]


@pytest.mark.parametrize(("term", "key", "bad"), NONFINITE_CASES)
def test_nonfinite_valid_values_raise_before_the_loss(contract_device, term, key, bad):
    batch = make_batch(device=contract_device, seed=20)
    store = batch.outputs if key in batch.outputs else batch.targets
    value = store[key].detach().clone()
    index = (0, 1) + (0,) * (value.ndim - 2)  # sample 0 is fully valid; (0, 1) is off-diagonal
    value[index] = bad
    store[key] = value
    with pytest.raises(NonFiniteOutputError) as info:
        run(MultiTaskLoss(), batch)
    message = str(info.value)
    assert message.startswith(f"{term}: {key} has 1 non-finite value(s)")
    assert f"first at {index} = {bad}" in message


@pytest.mark.usefixtures("pairwise_form")
def test_nonfinite_embeddings_are_named_in_the_error(contract_device):
    emb = torch.randn(3, 2, device=contract_device)
    emb[1, 0] = math.nan
    with pytest.raises(NonFiniteOutputError, match=r"^base_loss: embeddings has 1 non-finite"):
        MultiTaskLoss()(
            {"embeddings": emb}, {"base_target": torch.rand(3, 3, device=contract_device)}
        )


def test_classification_log_probability_of_minus_inf_is_rejected():
    log_probs = torch.tensor([[0.0, -math.inf]])
    with pytest.raises(NonFiniteOutputError, match="target_prediction"):
        MultiTaskLoss().compute_target_loss(log_probs, torch.tensor([0]), is_classifier=True)


# ------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("present", ["target", "count", "base", "nuc", "none"])
def test_missing_heads_contribute_exact_zero(contract_device, present):
    batch = make_batch(device=contract_device, seed=21)
    key = {
        "target": "target_prediction",
        "count": "count_prediction",
        "base": "base_prediction",
        "nuc": "nuc_predictions",
    }.get(present)
    outputs = {key: batch.outputs[key]} if key else {}
    losses = MultiTaskLoss()(outputs, batch.targets)
    for term in TERMS:
        if term.startswith(present):
            assert losses[term].item() > 0
        else:
            assert losses[term].item() == 0.0
            assert losses[term].device.type == contract_device
    total = sum((losses[t] for t in TERMS), torch.zeros((), device=contract_device))
    assert torch.equal(losses["total_loss"], total)


@pytest.mark.parametrize(
    ("output_key", "missing", "term"),
    [
        ("target_prediction", "target", "target_loss"),
        ("count_prediction", "counts", "count_loss"),
        ("count_prediction", "mask", "count_loss"),
        ("base_prediction", "base_target", "base_loss"),
        ("nuc_predictions", "nucleotides", "nuc_loss"),
        ("nuc_predictions", "nuc_mask", "nuc_loss"),
    ],
)
def test_present_output_with_missing_target_raises_naming_term_and_key(output_key, missing, term):
    batch = make_batch()
    targets = {k: v for k, v in batch.targets.items() if k != missing}
    with pytest.raises(ValueError, match=rf"^{term}: .*'{output_key}'.*'{missing}'"):
        MultiTaskLoss()({output_key: batch.outputs[output_key]}, targets)


@pytest.mark.usefixtures("pairwise_form")
def test_embeddings_give_the_unifrac_base_prediction(contract_device):
    emb = torch.randn(4, 3, device=contract_device, requires_grad=True)
    base_target = torch.rand(4, 4, device=contract_device)
    loss = MultiTaskLoss()
    losses = loss({"embeddings": emb}, {"base_target": base_target})
    expected = loss.compute_base_loss(compute_pairwise_distances(emb), base_target)
    assert torch.equal(losses["base_loss"], expected)
    losses["total_loss"].backward()
    assert emb.grad is not None
    assert torch.isfinite(emb.grad).all()
    assert (emb.grad != 0).any()


def test_embeddings_are_not_a_faith_pd_prediction(contract_device):
    emb = torch.randn(4, 3, device=contract_device)
    losses = MultiTaskLoss()({"embeddings": emb}, {}, encoder_type="faith_pd")
    assert losses["base_loss"].item() == 0.0


@pytest.mark.parametrize(
    ("outputs", "targets"), [([], {}), ({}, None)], ids=["outputs-list", "targets-none"]
)
def test_forward_rejects_non_dict_arguments(outputs, targets):
    with pytest.raises(TypeError, match="must be a dict"):
        MultiTaskLoss()(outputs, targets)


def test_forward_rejects_unknown_encoder_type_even_without_base_head():
    with pytest.raises(ValueError, match="encoder_type"):
        MultiTaskLoss()({}, {}, encoder_type="UniFrac")


# ------------------------------------------------------------------------------ properties


@st.composite
def masked_counts(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = draw(st.integers(1, 4))
    a = draw(st.integers(1, 5))
    n = b * a
    finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    pred = torch.tensor(draw(st.lists(finite, min_size=n, max_size=n))).reshape(b, a, 1)
    true = torch.tensor(draw(st.lists(finite, min_size=n, max_size=n))).reshape(b, a, 1)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(b, a)
    return pred, true, mask


@given(data=masked_counts(), fill=st.sampled_from([math.nan, math.inf, -math.inf, 3e38]))
def test_count_loss_equals_mse_on_the_valid_subset_whatever_the_padding(
    contract_device, data, fill
):
    pred, true, mask = (t.to(contract_device) for t in data)
    loss = MultiTaskLoss()
    valid = mask.unsqueeze(-1)
    garbage_pred = torch.where(valid, pred, fill).requires_grad_(True)
    value = loss.compute_count_loss(garbage_pred, torch.where(valid, true, fill), mask)
    value.backward()
    subset = pred[valid].cpu().to(F64), true[valid].cpu().to(F64)
    expected = F.mse_loss(*subset) if subset[0].numel() else torch.zeros((), dtype=F64)
    assert_matches(value, expected, torch.float32, n=pred.numel())
    assert torch.equal(garbage_pred.grad[~valid], torch.zeros_like(garbage_pred.grad[~valid]))
    assert torch.isfinite(garbage_pred.grad).all()


@given(
    seed=st.integers(0, 2**16),
    b=st.integers(1, 4),
    length=st.integers(1, 4),
    vocab=st.integers(1, 4),
)
def test_nucleotide_loss_equals_cross_entropy_on_the_valid_subset(
    contract_device, seed, b, length, vocab
):
    batch = with_garbage(
        make_batch(device=contract_device, seed=seed, b=b, a=3, length=length, vocab=vocab),
        math.nan,
    )
    logits, ids, mask = (
        batch.outputs["nuc_predictions"],
        batch.targets["nucleotides"],
        batch.targets["nuc_mask"],
    )
    value = MultiTaskLoss().compute_nucleotide_loss(logits, ids, mask)
    value.backward()
    valid = mask != 0
    expected = F.cross_entropy(logits.detach().cpu().to(F64)[valid.cpu()], ids.cpu()[valid.cpu()])
    assert_matches(value, expected, torch.float32, n=int(valid.sum()) * vocab)
    assert torch.isfinite(logits.grad).all()


@given(
    rows=st.lists(
        st.lists(st.sampled_from([0.0, 1.0, -2.5, 1e-6, 3.0]), min_size=2, max_size=2),
        min_size=1,
        max_size=5,
    )
)
@pytest.mark.usefixtures("pairwise_form")
def test_pairwise_distance_gradients_are_finite_for_any_duplicates(contract_device, rows):
    emb = torch.tensor(rows, dtype=F64, device=contract_device, requires_grad=True)
    distances = compute_pairwise_distances(emb)
    distances.sum().backward()
    torch.testing.assert_close(distances.cpu(), oracle_distances(emb), rtol=1e-12, atol=1e-18)
    assert torch.isfinite(emb.grad).all()


# ------------------------------------------------------------- regressions found by the gate


def test_nucleotide_nll_above_finfo_max_at_one_position_keeps_a_finite_mean(contract_device):
    # Found by C-REF-1 (nuc_loss): logits at -max and +max/2 give one position an nll of
    # ~5.1e38 > float32 max, while the mean over 8 valid positions (6.4e37) is representable.
    big = torch.finfo(torch.float32).max
    logits = torch.zeros((1, 1, 8, 2), device=contract_device)
    logits[0, 0, 0] = torch.tensor([-big, big / 2])
    ids = torch.zeros((1, 1, 8), dtype=torch.int64, device=contract_device)
    mask = torch.ones((1, 1, 8), dtype=torch.bool, device=contract_device)
    got = MultiTaskLoss().compute_nucleotide_loss(logits.requires_grad_(), ids, mask)
    expected = F.cross_entropy(logits.detach().double().reshape(8, 2), ids.reshape(8).cpu())
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-6, atol=0.0)
    got.backward()
    assert torch.isfinite(logits.grad).all()


def test_float32_class_weights_are_normalised_in_float64_for_float64_losses(contract_device):
    # Found by C-REF-1 (target_loss): weights (3, 1, 1) were divided by their max in float32,
    # so a float64 loss carried a float32 rounding of 1/3 (relative error 3e-9).
    weights = torch.tensor([3.0, 1.0, 1.0])
    log_probs = torch.log_softmax(
        torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(3)), 1
    )
    ids = torch.tensor([0, 1, 2, 0, 1, 1])
    loss = MultiTaskLoss(class_weights=weights).to(contract_device)
    got = loss.compute_target_loss(log_probs.to(contract_device), ids.to(contract_device), True)
    expected = F.nll_loss(log_probs, ids, weight=weights.double())
    torch.testing.assert_close(got.cpu(), expected, rtol=4 * torch.finfo(F64).eps, atol=0.0)


@pytest.mark.usefixtures("pairwise_form")
def test_overflowing_pairwise_distances_of_finite_embeddings_give_inf_not_an_error(contract_device):
    # Found by C-REF-1: finite embeddings 1.8e308 apart in two coordinates have a distance
    # above float64 max. The model's outputs are finite, so this is an inf loss (as the
    # reference has), not a NonFiniteOutputError about the computed distances.
    big = torch.finfo(F64).max
    emb = torch.tensor([[big, big], [0.0, 0.0], [1.0, 0.0]], dtype=F64, device=contract_device)
    base = torch.ones((3, 3), dtype=F64, device=contract_device)
    terms = MultiTaskLoss()({"embeddings": emb}, {"base_target": base})
    assert terms["base_loss"].item() == math.inf
    nan_emb = emb.clone()
    nan_emb[1, 0] = math.nan
    with pytest.raises(NonFiniteOutputError, match="embeddings"):
        MultiTaskLoss()({"embeddings": nan_emb}, {"base_target": base})


def test_nucleotide_check_screens_by_row_sums_and_confirms_on_the_logits(contract_device):
    # The non-finite check reads per-position sums of the logits; a sum that overflows from
    # finite logits must not raise, while -inf (which logsumexp would absorb) still must.
    big = torch.finfo(torch.float32).max
    logits = torch.zeros((1, 2, 3, 4), device=contract_device)
    logits[0, 0, 1] = torch.tensor([big, big, 0.0, 0.0])  # sum overflows; every logit finite
    ids = torch.zeros((1, 2, 3), dtype=torch.int64, device=contract_device)
    mask = torch.ones((1, 2, 3), dtype=torch.bool, device=contract_device)
    for call in (
        lambda x: MultiTaskLoss().compute_nucleotide_loss(x, ids, mask),
        lambda x: MultiTaskLoss()({"nuc_predictions": x}, {"nucleotides": ids, "nuc_mask": mask})[
            "nuc_loss"
        ],
    ):
        assert torch.isfinite(call(logits))
        bad = logits.clone()
        bad[0, 1, 2, 3] = -math.inf
        with pytest.raises(NonFiniteOutputError, match=r"nuc_predictions has 1 non-finite") as info:
            call(bad)
        assert "(0, 1, 2, 3)" in str(info.value)


# ------------------------------------------------ nucleotide cross-entropy: shift invariance
# Issue 10, item 6: cross-entropy is shift-invariant, so its error must scale with the spread
# of the logits, never with their size. ``lse - picked`` on unshifted logits subtracted two huge,
# nearly equal numbers: [1e7, 1e7] gave 1.0 instead of log 2, finfo.max gave 0 with the
# gradient (0, 1).

_F32_MAX = torch.finfo(torch.float32).max


def _nuc_value_and_grad(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logits.detach().clone().requires_grad_(True)
    value = MultiTaskLoss().compute_nucleotide_loss(leaf, ids, mask)
    value.backward()
    assert leaf.grad is not None
    return value, leaf.grad


@pytest.mark.parametrize(
    "magnitude", [1.0, 1e4, 1e7, 1e30, _F32_MAX, -1e7, -_F32_MAX], ids=lambda m: f"{m:.3g}"
)
def test_equal_logits_of_any_magnitude_give_log_2_and_softmax_minus_onehot(
    contract_device, magnitude
):
    logits = torch.full((1, 1, 1, 2), magnitude, device=contract_device)
    ids = torch.ones((1, 1, 1), dtype=torch.int64, device=contract_device)
    mask = torch.ones((1, 1, 1), dtype=torch.bool, device=contract_device)
    value, grad = _nuc_value_and_grad(logits, ids, mask)
    assert value.item() == pytest.approx(math.log(2), rel=1e-6)
    # softmax - onehot = (0.5, 0.5) - (0, 1), divided by the one valid position.
    expected = torch.tensor([[[[0.5, -0.5]]]], device=contract_device)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=0.0)


def test_gradient_is_divided_by_the_valid_count_whatever_the_magnitude(contract_device):
    # Two valid positions and one padded one holding NaN: each valid gradient is halved.
    logits = torch.full((1, 1, 3, 2), 1e7, device=contract_device)
    logits[0, 0, 2] = math.nan
    ids = torch.tensor([[[1, 0, -100]]], device=contract_device)
    mask = torch.tensor([[[True, True, False]]], device=contract_device)
    value, grad = _nuc_value_and_grad(logits, ids, mask)
    assert value.item() == pytest.approx(math.log(2), rel=1e-6)
    expected = torch.tensor([[[[0.25, -0.25], [-0.25, 0.25], [0.0, 0.0]]]], device=contract_device)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e7, -1e7], ids=lambda o: f"offset={o:g}")
def test_nucleotide_error_scales_with_the_spread_of_the_logits_not_their_size(
    contract_device, offset
):
    # Every logit offset + k * ulp(offset) is exact in float32, so the float64 reference sees
    # the same spread (0, 1, 3, -2 units) whatever the offset: the loss must not move.
    unit = max(1.0, 2.0 ** (math.frexp(offset)[1] - 23))  # a power of two >= ulp(offset)
    spread = torch.tensor([[0.0, 1.0, 3.0, -2.0], [2.0, 2.0, 0.0, 1.0]], dtype=F64) * unit
    exact = (offset + spread).to(torch.float32)
    assert torch.equal(exact.to(F64) - offset, spread)  # the spread survived rounding
    logits = exact.reshape(1, 1, 2, 4).to(contract_device)
    ids = torch.tensor([[[2, 3]]], device=contract_device)
    mask = torch.ones((1, 1, 2), dtype=torch.bool, device=contract_device)
    value, grad = _nuc_value_and_grad(logits, ids, mask)
    ref = spread.clone().requires_grad_(True)
    expected = F.cross_entropy(ref, torch.tensor([2, 3]))
    expected.backward()
    torch.testing.assert_close(value.cpu().to(F64), expected.detach(), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grad.cpu().to(F64).reshape(2, 4), ref.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [
        (torch.float16, 6e4),
        (torch.float16, float(torch.finfo(torch.float16).max)),
        (torch.bfloat16, 1e30),
        (torch.bfloat16, float(torch.finfo(torch.bfloat16).max)),
    ],
    ids=lambda p: str(p),
)
def test_half_logits_are_computed_in_float32_and_shift_invariant(contract_device, dtype, magnitude):
    logits = torch.full((1, 1, 1, 2), magnitude, dtype=dtype, device=contract_device)
    ids = torch.ones((1, 1, 1), dtype=torch.int64, device=contract_device)
    mask = torch.ones((1, 1, 1), dtype=torch.bool, device=contract_device)
    value, grad = _nuc_value_and_grad(logits, ids, mask)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(math.log(2), rel=1e-6)
    assert grad.dtype == dtype
    expected = torch.tensor([[[[0.5, -0.5]]]], dtype=dtype, device=contract_device)
    torch.testing.assert_close(grad, expected, rtol=0.0, atol=0.0)


# ------------------------------------------------ nucleotide cross-entropy: the fused backward
# Issue 13, item 1: the nucleotide term has a hand-written backward ((softmax - onehot) / n in
# one pass), so its gradient is checked against float64 autograd through a plain reference.


def _reference_nuc_grad(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, upstream: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 value and gradient of ``upstream * cross_entropy`` on the valid subset."""
    leaf = logits.detach().cpu().to(F64).requires_grad_(True)
    valid = mask.cpu() != 0
    picked = leaf[valid]
    if picked.numel():
        value = F.cross_entropy(picked, ids.cpu()[valid].long())
    else:
        value = (leaf * 0.0).sum()
    (value * upstream).backward()
    assert leaf.grad is not None
    return value.detach(), leaf.grad


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("fill", ["0", "nan", "inf", "max"])
def test_nucleotide_gradient_matches_float64_autograd_of_the_reference(
    contract_device, dtype, fill
):
    value = torch.finfo(dtype).max if fill == "max" else float(fill)
    batch = with_garbage(make_batch(device=contract_device, seed=31, dtype=dtype, scale=3.0), value)
    logits, ids, mask = (
        batch.outputs["nuc_predictions"],
        batch.targets["nucleotides"],
        batch.targets["nuc_mask"],
    )
    upstream = 2.5  # a non-unit upstream gradient reaches the logits through the penalty
    losses = MultiTaskLoss(nuc_penalty=upstream)(
        {"nuc_predictions": logits}, {"nucleotides": ids, "nuc_mask": mask}
    )
    losses["total_loss"].backward()
    assert logits.grad is not None
    assert logits.grad.dtype == dtype
    clean = torch.where(batch.valid["nuc_predictions"], logits.detach(), 0.0)
    reference, expected = _reference_nuc_grad(clean, ids, mask, upstream)
    assert_matches(losses["nuc_loss"], reference, dtype, n=clean.numel())
    valid = batch.valid["nuc_predictions"].cpu()
    got = logits.grad.cpu().to(F64)
    # Entries are at most upstream / n_valid: that is the scale of any cancellation.
    scale = upstream / int((mask != 0).sum())
    tol = tolerance(dtype, n=clean.shape[-1], scale=scale)
    torch.testing.assert_close(got[valid], expected[valid], rtol=tol.rtol, atol=tol.atol)
    assert torch.equal(got[~valid], torch.zeros_like(got[~valid]))  # exactly 0 (never nan)


def test_nucleotide_loss_passes_gradcheck_in_float64(contract_device):
    gen = torch.Generator().manual_seed(32)
    logits = (torch.randn(2, 3, 4, 5, generator=gen, dtype=F64) * 2).to(contract_device)
    ids = torch.randint(0, 5, (2, 3, 4), generator=gen).to(contract_device)
    mask = torch.rand(2, 3, 4, generator=gen).to(contract_device) < 0.6
    loss = MultiTaskLoss()
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: loss.compute_nucleotide_loss(x, ids, mask), (logits,), eps=1e-6, atol=1e-9
    )


def test_nucleotide_loss_supports_double_backward(contract_device):
    # Decision (issue 13): double backward works. The fast first backward is not itself
    # differentiable, so under create_graph=True it is recomputed with differentiable ops.
    gen = torch.Generator().manual_seed(33)
    logits = torch.randn(2, 2, 3, 4, generator=gen, dtype=F64).to(contract_device)
    logits[0, 1] = math.nan  # garbage at padded positions: no NaN in second derivatives either
    ids = torch.randint(0, 4, (2, 2, 3), generator=gen).to(contract_device)
    mask = torch.ones(2, 2, 3, dtype=torch.bool, device=contract_device)
    mask[0, 1] = False
    loss = MultiTaskLoss()
    leaf = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        loss.compute_nucleotide_loss(leaf, ids, mask), leaf, create_graph=True
    )
    (hess_diag,) = torch.autograd.grad((grad * grad).sum(), leaf)
    assert torch.isfinite(hess_diag).all()
    assert torch.equal(hess_diag[0, 1], torch.zeros_like(hess_diag[0, 1]))
    clean = torch.where(mask.unsqueeze(-1), logits, 0.0).requires_grad_(True)
    (ref_grad,) = torch.autograd.grad(
        F.cross_entropy(clean[mask], ids[mask]), clean, create_graph=True
    )
    (ref_hess,) = torch.autograd.grad((ref_grad * ref_grad).sum(), clean)
    torch.testing.assert_close(grad.detach(), ref_grad.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(hess_diag[mask], ref_hess[mask], rtol=1e-10, atol=1e-14)
    fine = logits.detach().clone().nan_to_num_(0.0).requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda x: loss.compute_nucleotide_loss(x, ids, mask), (fine,), eps=1e-6, atol=1e-8
    )


def test_nucleotide_backward_can_run_twice_with_retain_graph(contract_device):
    batch = make_batch(device=contract_device, seed=34)
    logits = batch.outputs["nuc_predictions"]
    value = MultiTaskLoss().compute_nucleotide_loss(
        logits, batch.targets["nucleotides"], batch.targets["nuc_mask"]
    )
    value.backward(retain_graph=True)
    first = logits.grad.clone()
    value.backward()
    torch.testing.assert_close(logits.grad, 2 * first, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("block_rows", [1, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_nucleotide_blocks_give_the_single_block_value_and_gradient(
    contract_device, monkeypatch, dtype, block_rows
):
    # On the cpu the rows go through the loss in blocks (NUC_BLOCK_ROWS per thread). Blocks
    # of 1 and 7 rows (a partial last block, NaN padding straddling block edges) must give
    # the value and gradient of one block holding every row, which the reference tests
    # check; a row dropped or shifted at a block edge changes both. Not bitwise: a block
    # narrower than a vector takes the scalar exp, which may differ from the vectorized
    # one in the last bit, so a few ulps of the result's dtype (and exact 0 at padding).
    batch = with_garbage(make_batch(device=contract_device, seed=36, dtype=dtype), math.nan)
    args = (
        batch.outputs["nuc_predictions"],
        batch.targets["nucleotides"],
        batch.targets["nuc_mask"],
    )
    rows = args[1].numel()
    monkeypatch.setattr(losses_module, "NUC_BLOCK_ROWS", rows)
    expected = _nuc_value_and_grad(*args)
    monkeypatch.setattr(losses_module, "NUC_BLOCK_ROWS", block_rows)
    assert rows % (block_rows * torch.get_num_threads()) != 0 or block_rows == 1
    got = _nuc_value_and_grad(*args)
    ulps = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(got[0], expected[0], rtol=ulps, atol=0.0)
    torch.testing.assert_close(got[1], expected[1], rtol=ulps, atol=0.0)
    padded = ~batch.valid["nuc_predictions"]
    assert torch.equal(got[1][padded], torch.zeros_like(got[1][padded]))


def test_nucleotide_forward_without_grad_writes_no_gradient(contract_device, monkeypatch):
    # The forward writes the gradient only when autograd will ask for it: under no_grad, or
    # for logits that do not require grad, it allocates no [M, V] gradient.
    seen: list[bool] = []
    rows = losses_module._cross_entropy_rows

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = rows(*args, **kwargs)
        seen.append(result[-1] is not None)
        return result

    monkeypatch.setattr(losses_module, "_cross_entropy_rows", spy)
    batch = make_batch(device=contract_device, seed=37)
    logits = batch.outputs["nuc_predictions"]
    ids, mask = batch.targets["nucleotides"], batch.targets["nuc_mask"]
    loss = MultiTaskLoss()
    with torch.no_grad():
        loss.compute_nucleotide_loss(logits, ids, mask)
    loss.compute_nucleotide_loss(logits.detach(), ids, mask)
    loss.compute_nucleotide_loss(logits, ids, mask).backward()
    assert seen == [False, False, True]


@pytest.mark.parametrize("precision", ["medium", "high"])
def test_nucleotide_loss_does_not_depend_on_the_float32_matmul_precision(
    contract_device, precision
):
    # The class-major copy must stay an exact transpose under every matmul precision (a
    # BLAS identity product would round the logits in bf16/tf32 modes), so value and
    # gradient are bitwise those of the default setting.
    batch = with_garbage(make_batch(device=contract_device, seed=35), math.nan)
    args = (
        batch.outputs["nuc_predictions"],
        batch.targets["nucleotides"],
        batch.targets["nuc_mask"],
    )
    expected = _nuc_value_and_grad(*args)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        got = _nuc_value_and_grad(*args)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize("precision", ["highest", "medium"])
def test_minus_inf_logit_that_is_neither_maximum_nor_picked_raises(contract_device, precision):
    # Neither the row maximum nor x[id] sees a -inf elsewhere in the row; only the row-sum
    # screen does, whichever class-major copy the precision setting selects (the BLAS copy
    # may spread it to NaN over the row, the plain transpose does not).
    logits = torch.zeros((1, 1, 2, 4), device=contract_device)
    logits[0, 0, 1, 2] = -math.inf
    ids = torch.tensor([[[1, 0]]], device=contract_device)
    mask = torch.ones((1, 1, 2), dtype=torch.bool, device=contract_device)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        with pytest.raises(NonFiniteOutputError, match=r"first at \(0, 0, 1, 2\) = -inf"):
            MultiTaskLoss()({"nuc_predictions": logits}, {"nucleotides": ids, "nuc_mask": mask})
    finally:
        torch.set_float32_matmul_precision(before)


def test_nucleotide_loss_of_no_valid_position_is_zero_with_zero_gradient(contract_device):
    logits = torch.full((2, 1, 3, 4), math.nan, device=contract_device, requires_grad=True)
    ids = torch.full((2, 1, 3), -100, device=contract_device)
    mask = torch.zeros((2, 1, 3), dtype=torch.bool, device=contract_device)
    value = MultiTaskLoss().compute_nucleotide_loss(logits, ids, mask)
    value.backward()
    assert value.item() == 0.0
    assert not math.copysign(1.0, value.item()) < 0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
