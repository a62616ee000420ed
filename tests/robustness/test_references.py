"""The float64 loss references: hand-computed examples, torch.nn.functional, gradients.

The references are the oracle of C-REF-1 and C-MASK-2, so they are checked against what a
person computes by hand on tiny inputs and against ``torch.nn.functional`` in float64 on the
boolean-selected valid entries (an independent implementation of the same formulas).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import robustness.references._losses as refs
from robustness.errors import HarnessUsageError
from robustness.references._losses import (
    reference_base_loss,
    reference_count_loss,
    reference_gradients,
    reference_losses,
    reference_nucleotide_loss,
    reference_pairwise_distances,
    reference_target_loss,
    reference_total_loss,
)
from robustness.strategies import MultiTaskBatch, embeddings, multitask_batches

F64 = torch.float64
NAN = math.nan


def t(values: object, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def test_exports_match_the_public_names() -> None:
    public = {n for n in vars(refs) if n.startswith("reference_")}
    assert public <= set(refs.__all__)
    assert all(hasattr(refs, n) for n in refs.__all__)


# --------------------------------------------------------------------------- hand-computed


def test_count_loss_by_hand_ignores_padding() -> None:
    pred = t([[[1.0], [NAN], [3.0]], [[math.inf], [0.0], [0.0]]])
    true = t([[[0.0], [5.0], [1.0]], [[0.0], [0.0], [2.0]]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    # valid errors: 1, 2, -2 -> (1 + 4 + 4) / 3
    assert reference_count_loss(pred, true, mask) == 3.0
    assert reference_count_loss(pred, true, mask.float()) == 3.0
    assert reference_count_loss(pred, true, mask.bool()) == 3.0


def test_count_loss_with_no_valid_asv_is_zero() -> None:
    pred = t([[[NAN], [math.inf]]])
    assert reference_count_loss(pred, pred, torch.zeros(1, 2)) == 0.0


def test_regression_target_losses_by_hand() -> None:
    pred, true = t([[0.0, 3.0]]), t([[0.5, 0.0]])
    assert reference_target_loss(pred, true, loss_type="mse") == (0.25 + 9.0) / 2
    assert reference_target_loss(pred, true, loss_type="mae") == (0.5 + 3.0) / 2
    # huber(0.5) = 0.5 * 0.25, huber(3) = 3 - 0.5
    assert reference_target_loss(pred, true, loss_type="huber") == (0.125 + 2.5) / 2


def test_huber_switches_at_delta_one() -> None:
    assert reference_target_loss(t([1.0]), t([0.0]), loss_type="huber") == 0.5
    assert reference_target_loss(t([-2.0]), t([0.0]), loss_type="huber") == 1.5


def test_classification_nll_by_hand() -> None:
    log_probs = t([[math.log(0.5), math.log(0.5)], [math.log(0.25), math.log(0.75)]])
    ids = torch.tensor([0, 1])
    expected = (math.log(2) - math.log(0.75)) / 2
    assert reference_target_loss(log_probs, ids, is_classifier=True) == pytest.approx(
        expected, rel=1e-15
    )
    # weights 3 and 1: (3 * log 2 + 1 * -log 0.75) / 4
    weighted = reference_target_loss(
        log_probs, ids, is_classifier=True, class_weights=t([3.0, 1.0])
    )
    assert weighted == pytest.approx((3 * math.log(2) - math.log(0.75)) / 4, rel=1e-15)


def test_classification_with_zero_selected_weights_is_zero() -> None:
    log_probs = t([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    ids = torch.tensor([1, 1])
    weights = t([5.0, 0.0, 2.0])
    assert reference_target_loss(log_probs, ids, is_classifier=True, class_weights=weights) == 0.0


def test_unifrac_base_loss_uses_off_diagonal_entries_only() -> None:
    pred = t([[NAN, 1.0], [3.0, math.inf]])
    true = t([[0.0, 0.0], [1.0, 0.0]])
    assert reference_base_loss(pred, true) == (1.0 + 4.0) / 2


def test_unifrac_base_loss_with_one_sample_is_zero() -> None:
    assert reference_base_loss(t([[NAN]]), t([[0.0]])) == 0.0


def test_faith_pd_base_loss_uses_every_entry() -> None:
    pred, true = t([[1.0], [2.0]]), t([[0.0], [0.0]])
    assert reference_base_loss(pred, true, encoder_type="faith_pd") == 2.5


def test_nucleotide_loss_by_hand() -> None:
    logits = t([[[[0.0, 0.0], [NAN, NAN], [math.log(3.0), 0.0]]]])
    ids = torch.tensor([[[1, -100, 0]]])
    mask = torch.tensor([[[True, False, True]]])
    # -log(1/2) and -log(3/4)
    expected = (math.log(2.0) - math.log(0.75)) / 2
    assert reference_nucleotide_loss(logits, ids, mask) == pytest.approx(expected, rel=1e-15)


def test_nucleotide_loss_with_no_valid_position_is_zero() -> None:
    logits = torch.full((1, 1, 2, 3), NAN, dtype=F64)
    assert reference_nucleotide_loss(logits, torch.full((1, 1, 2), -100), torch.zeros(1, 1, 2)) == 0


def test_pairwise_distances_by_hand() -> None:
    rows = t([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [3.0, 4.000001]])
    d = reference_pairwise_distances(rows)
    assert d[0, 1] == d[1, 0] == 5.0
    assert d[1, 2] == 0.0
    assert d[2, 3] == pytest.approx(1e-6, rel=1e-6)
    assert (np.diag(d) == 0).all()


def test_total_is_the_penalty_weighted_sum() -> None:
    losses = {"target_loss": 1.0, "count_loss": 2.0, "base_loss": 3.0, "nuc_loss": 4.0}
    total = reference_total_loss(
        losses, target_penalty=0.5, count_penalty=2.0, penalty=1.5, nuc_penalty=0.0
    )
    assert total == 0.5 + 4.0 + 4.5


def test_zero_penalty_drops_an_unrepresentable_term() -> None:
    assert reference_total_loss({"base_loss": math.inf, "count_loss": 1.0}, penalty=0.0) == 1.0


# --------------------------------------------------------------------------- range


def test_mean_square_does_not_overflow_when_the_mean_is_representable() -> None:
    # 3e154 squared (9e308) overflows float64, even halved and squared (2.25e308), yet the
    # mean over 8 entries, 1.125e308, does not.
    pred = torch.zeros(1, 8, 1, dtype=F64)
    pred[0, 0, 0] = 3e154
    value = reference_count_loss(pred, torch.zeros_like(pred), torch.ones(1, 8))
    assert value == pytest.approx(1.125e308, rel=1e-15)


def test_differences_of_opposite_extremes_stay_finite() -> None:
    big = torch.finfo(F64).max
    # |big - (-big / 2)| overflows float64, but the mean error 0.75 * big does not.
    mae = reference_target_loss(t([big, 0.0]), t([-big / 2, 0.0]), loss_type="mae")
    assert mae == pytest.approx(0.75 * big, rel=1e-15)
    huber = reference_target_loss(t([big, 0.0]), t([-big / 2, 0.0]), loss_type="huber")
    assert huber == pytest.approx(0.75 * big, rel=1e-15)
    assert reference_target_loss(t([big]), t([-big]), loss_type="mse") == math.inf


def test_cross_entropy_of_huge_logits_is_finite() -> None:
    logits = t([[[[1000.0, 0.0]]]])
    loss = reference_nucleotide_loss(logits, torch.tensor([[[1]]]), torch.ones(1, 1, 1))
    assert loss == 1000.0


def test_pairwise_distances_of_huge_rows_are_finite() -> None:
    d = reference_pairwise_distances(t([[3e200, 4e200], [0.0, 0.0]]))
    assert d[0, 1] == pytest.approx(5e200, rel=1e-15)


def test_cross_entropy_gradient_of_huge_equal_logits_is_the_softmax() -> None:
    big = 1.3e154
    batch = MultiTaskBatch(
        outputs={"nuc_predictions": t([[[[big, big]]]])},
        targets={"nucleotides": torch.tensor([[[0]]]), "nuc_mask": torch.ones(1, 1, 1)},
        padded={"nuc_predictions": torch.zeros(1, 1, 1, 2, dtype=torch.bool)},
    )
    grad = reference_gradients(batch, "nuc")["nuc_predictions"]
    torch.testing.assert_close(grad, t([[[[-0.5, 0.5]]]]), rtol=1e-15, atol=0.0)


# --------------------------------------------------------------------------- vs torch.nn.functional

_values = st.floats(-100, 100, allow_subnormal=False)


def _array(n: int) -> st.SearchStrategy[list[float]]:
    return st.lists(_values, min_size=n, max_size=n)


@given(st.integers(1, 8).flatmap(lambda n: st.tuples(_array(n), _array(n))))
def test_regression_losses_equal_torch_functional(pair: tuple[list[float], list[float]]) -> None:
    pred, true = t(pair[0]), t(pair[1])
    for loss_type, fn in (("mse", F.mse_loss), ("mae", F.l1_loss), ("huber", F.huber_loss)):
        expected = fn(pred, true).item()
        got = reference_target_loss(pred, true, loss_type=loss_type)
        assert got == pytest.approx(expected, rel=1e-13, abs=1e-300), loss_type


@given(st.data())
def test_count_loss_equals_mse_of_the_selected_entries(data: st.DataObject) -> None:
    b, a = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    pred = t(data.draw(_array(b * a))).reshape(b, a, 1)
    true = t(data.draw(_array(b * a))).reshape(b, a, 1)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b * a, max_size=b * a)))
    mask = mask.reshape(b, a)
    garbage = torch.where(mask.unsqueeze(-1), pred, torch.full_like(pred, NAN))
    expected = F.mse_loss(pred[mask], true[mask]).item() if mask.any() else 0.0
    assert reference_count_loss(garbage, true, mask) == pytest.approx(expected, rel=1e-13)


@given(st.data())
def test_weighted_nll_equals_torch_nll_loss(data: st.DataObject) -> None:
    b, k = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    logits = t(data.draw(_array(b * k))).reshape(b, k)
    log_probs = F.log_softmax(logits, dim=-1)
    ids = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)))
    weights = t(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=k, max_size=k)))
    plain = F.nll_loss(log_probs, ids).item()
    assert reference_target_loss(log_probs, ids, is_classifier=True) == pytest.approx(
        plain, rel=1e-13
    )
    got = reference_target_loss(log_probs, ids, is_classifier=True, class_weights=weights)
    if weights[ids].sum() == 0:
        assert got == 0.0  # torch gives 0/0 = nan here; the contract says 0 (C-WEIGHT-1)
    else:
        expected = F.nll_loss(log_probs, ids, weight=weights).item()
        assert got == pytest.approx(expected, rel=1e-13)


@given(st.data())
def test_nucleotide_loss_equals_cross_entropy_of_the_selected_positions(
    data: st.DataObject,
) -> None:
    b, a, length, v = (data.draw(st.integers(1, 3)) for _ in range(4))
    n = b * a * length
    logits = t(data.draw(_array(n * v))).reshape(b, a, length, v)
    ids = torch.tensor(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    ids = ids.reshape(b, a, length)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    mask = mask.reshape(b, a, length)
    expected = F.cross_entropy(logits[mask], ids[mask]).item() if mask.any() else 0.0
    padded_ids = torch.where(mask, ids, -100)
    got = reference_nucleotide_loss(logits, padded_ids, mask.int())
    assert got == pytest.approx(expected, rel=1e-13, abs=1e-300)


@given(embeddings(dtype=F64))
def test_pairwise_distances_equal_direct_cdist(rows: torch.Tensor) -> None:
    expected = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")
    got = torch.from_numpy(reference_pairwise_distances(rows))
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0.0)


# --------------------------------------------------------------------------- reference_losses


@given(multitask_batches(dtype=F64))
def test_reference_losses_assemble_the_term_references(batch: MultiTaskBatch) -> None:
    values = reference_losses(batch)
    assert set(values) == {"target_loss", "count_loss", "base_loss", "nuc_loss", "total_loss"}
    out, tg, kw = batch.outputs, batch.targets, batch.loss_kwargs
    if "count_prediction" in out:
        assert values["count_loss"] == reference_count_loss(
            out["count_prediction"], tg["counts"], tg["mask"]
        )
    if "embeddings" in out:
        distances = torch.cdist(out["embeddings"], out["embeddings"])
        assert values["base_loss"] == pytest.approx(
            reference_base_loss(distances, tg["base_target"]), rel=1e-9, abs=1e-12
        )
    total = sum(
        kw[p] * values[term]
        for p, term in (
            ("target_penalty", "target_loss"),
            ("count_penalty", "count_loss"),
            ("penalty", "base_loss"),
            ("nuc_penalty", "nuc_loss"),
        )
    )
    assert values["total_loss"] == pytest.approx(total, rel=1e-15, abs=0.0)


@given(multitask_batches(dtype=F64, kind="ordinary"), st.sampled_from([NAN, math.inf, 1e308]))
def test_reference_losses_ignore_padding_garbage(batch: MultiTaskBatch, fill: float) -> None:
    assert reference_losses(batch.with_garbage(fill)) == reference_losses(batch)


# --------------------------------------------------------------------------- gradients


def _functional_term(batch: MultiTaskBatch, term: str, leaf: torch.Tensor) -> torch.Tensor:
    """The same term written with torch.nn.functional on boolean-selected entries."""
    tg, kw = batch.targets, batch.loss_kwargs
    if term == "count":
        valid = tg["mask"] != 0
        if not valid.any():
            return leaf.sum() * 0.0
        return F.mse_loss(leaf[valid], tg["counts"][valid])
    if term == "nuc":
        valid = tg["nuc_mask"] != 0
        if not valid.any():
            return leaf.sum() * 0.0
        return F.cross_entropy(leaf[valid], tg["nucleotides"][valid])
    if term == "base":
        if batch.encoder_type == "faith_pd":
            return F.mse_loss(leaf, tg["base_target"])
        off = ~torch.eye(leaf.shape[0], dtype=torch.bool)
        if not off.any():
            return leaf.sum() * 0.0
        return F.mse_loss(leaf[off], tg["base_target"][off])
    if batch.is_classifier:
        weights = kw.get("class_weights")
        w = None if weights is None else weights.double()
        if w is not None and w[tg["target"]].sum() == 0:
            return leaf.sum() * 0.0
        return F.nll_loss(leaf, tg["target"], weight=w)
    fn = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}
    return fn[kw["target_loss_type"]](leaf, tg["target"])


@pytest.mark.parametrize("term", ["target", "count", "base", "nuc"])
@given(batch=multitask_batches(dtype=F64, embeddings=False))
def test_reference_gradients_equal_functional_gradients(term: str, batch: MultiTaskBatch) -> None:
    key = batch.output_key(term)
    clean = batch.outputs[key].detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_functional_term(batch, term, clean), clean)
    got = reference_gradients(batch.with_garbage(NAN), term)
    assert set(got) == {key}
    assert got[key].dtype == F64
    assert got[key].shape == clean.shape
    # Gradient entries are at most 2 * |error| / n: an atol of a few float64 ulps of 1 is fair.
    torch.testing.assert_close(got[key], expected, rtol=1e-12, atol=1e-15)
    assert bool((got[key][batch.padded[key]] == 0).all())


@given(multitask_batches(dtype=F64))
def test_total_gradient_is_the_penalty_weighted_sum(batch: MultiTaskBatch) -> None:
    total = reference_gradients(batch, "total_loss")
    assert set(total) == set(batch.outputs)
    penalty = {"target": "target_penalty", "count": "count_penalty", "base": "penalty"}
    for term in batch.terms:
        key = batch.output_key(term)
        weight = batch.loss_kwargs[penalty.get(term, "nuc_penalty")]
        # Exactly the term's own gradient times its penalty: one rounding. Weighting inside
        # autograd's chain lost digits to subnormal intermediates (penalty = finfo.tiny and
        # embeddings 1e-6 apart gave a relative error of 8e-4 in the base term's gradient).
        assert torch.equal(total[key], weight * reference_gradients(batch, term)[key])


def _embedding_batch(rows: torch.Tensor) -> MultiTaskBatch:
    b = rows.shape[0]
    return MultiTaskBatch(
        outputs={"embeddings": rows},
        targets={"base_target": torch.ones(b, b, dtype=F64) - torch.eye(b, dtype=F64)},
        padded={"embeddings": torch.zeros(rows.shape, dtype=torch.bool)},
    )


def test_duplicate_embeddings_get_zero_gradient_and_near_duplicates_non_zero() -> None:
    rows = t([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    grads = reference_gradients(_embedding_batch(rows), "base")["embeddings"]
    assert bool(torch.isfinite(grads).all())
    # The duplicate pair (0, 1) contributes nothing; only the pairs with row 2 pull.
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)

    near = t([[0.0, 0.0], [1e-6, 0.0]])
    grads = reference_gradients(_embedding_batch(near), "base")["embeddings"]
    # d = 1e-6, loss = (d - 1)^2 over 2 entries: dL/dx0 = 2 (d - 1) * (-1) * 2 / 2
    torch.testing.assert_close(grads[0, 0], t(2 * (1 - 1e-6)), rtol=1e-12, atol=0.0)


def test_embedding_gradients_equal_autograd_of_cdist_away_from_duplicates() -> None:
    rows = t([[0.5, -1.0, 2.0], [1.5, 0.0, -2.0], [0.0, 3.0, 1.0]])
    batch = _embedding_batch(rows)
    leaf = rows.clone().requires_grad_(True)
    off = ~torch.eye(3, dtype=torch.bool)
    dist = torch.cdist(leaf, leaf, compute_mode="donot_use_mm_for_euclid_dist")
    loss = F.mse_loss(dist[off], batch.targets["base_target"][off])
    (expected,) = torch.autograd.grad(loss, leaf)
    got = reference_gradients(batch, "base")["embeddings"]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: reference_count_loss(t([[[1.0]]]), t([[[1.0]]]), torch.ones(1, 2)), "mask"),
        (lambda: reference_target_loss(t([1.0]), t([1.0, 2.0])), "does not match"),
        (lambda: reference_target_loss(t([1.0]), t([1.0]), loss_type="l3"), "loss_type"),
        (
            lambda: reference_target_loss(t([[-1.0]]), torch.tensor([1]), is_classifier=True),
            "class ids",
        ),
        (lambda: reference_base_loss(t([[1.0, 2.0]]), t([[1.0, 2.0]])), "unifrac needs"),
        (lambda: reference_base_loss(t([[1.0]]), t([[1.0]]), encoder_type="x"), "encoder_type"),
        (
            lambda: reference_nucleotide_loss(
                torch.zeros(1, 1, 1, 2), torch.tensor([[[2]]]), torch.ones(1, 1, 1)
            ),
            "ids at valid positions",
        ),
        (lambda: reference_pairwise_distances(t([1.0, 2.0])), "embeddings must be"),
    ],
    ids=[
        "mask shape",
        "target shape",
        "loss type",
        "class id",
        "unifrac",
        "encoder",
        "nuc id",
        "embeddings",
    ],
)
def test_bad_reference_input_raises_a_clear_error(call: object, message: str) -> None:
    with pytest.raises(HarnessUsageError, match=message):
        call()  # type: ignore[operator]
