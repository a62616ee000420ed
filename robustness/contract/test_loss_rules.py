"""The packaged loss contract suite: every loss rule of the contract but C-WEIGHTS-1.

Each test draws batches with the harness's strategies and hands them, on the device under test,
to the rule's check (``robustness.properties._losses``), which raises ``ContractViolation`` with
a repro file. Per-term rules are parametrized over the term. A per-term row is judged on the
batch restricted to that term's head (``forward`` holding only it, as the regression guard
does), so a bug confined to one term fails that term's rows and the ``total_loss`` rows, never
the other terms' rows; ``total_loss`` rows keep every head, so a term is still computed beside
the others there (the historical NaN came from such an interaction). The historical failures
are explicit examples, restricted to the row's head like any batch: remainder batches (B = 3
and B = 1 after a full batch), all-padding masks, duplicate embeddings and NaN garbage at
padded positions. Example budgets come from the Hypothesis profile (dev / ci / thorough), never
from a test.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from robustness.contract._batches import row_batches
from robustness.properties._losses import (
    LOSS_INPUT_CASES,
    LOSS_SHAPE_CASES,
    LOSS_TERMS,
    check_device_agreement,
    check_empty_terms,
    check_finite_gradients,
    check_finite_values,
    check_half_precision,
    check_invalid_inputs,
    check_invariants,
    check_mask_gradients,
    check_mask_values,
    check_nonfinite_detection,
    check_padding_invariance,
    check_pairwise_distances,
    check_purity,
    check_ragged_batches,
    check_reference_values,
    check_scalar_terms,
    check_shape_mismatch,
    check_zero_class_weights,
)
from robustness.properties._regress import _only_head
from robustness.strategies import MultiTaskBatch, multitask_batches

PER_HEAD = ("target_loss", "count_loss", "base_loss", "nuc_loss")
EMPTIABLE = ("count_loss", "base_loss", "nuc_loss", "total_loss")
HALVES = st.sampled_from([torch.float16, torch.bfloat16])


# Batches with every head (values only for a per-term row's head); ordinary values, or finite
# extremes of the dtype.
ORDINARY = row_batches(allow_noncontiguous=True)
FINITE = row_batches(allow_noncontiguous=True) | row_batches(kind="extreme")


# --------------------------------------------------------------------------- historical batches


def _full_batch(
    size: int,
    *,
    asvs: int = 3,
    length: int = 4,
    vocab: int = 4,
    classifier: bool = False,
    embeddings: torch.Tensor | None = None,
    empty: bool = False,
    garbage: float | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> MultiTaskBatch:
    """A float32 batch with every head, ragged trailing padding and fixed values."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen)

    asv_len = torch.arange(size) % (asvs + 1)  # sample i has i mod (A+1) ASVs: 0 included
    mask = torch.arange(asvs) < asv_len[:, None]
    pos_len = (torch.arange(size * asvs).reshape(size, asvs) % length) + 1
    nuc_mask = (torch.arange(length) < pos_len[..., None]) & mask[..., None]
    if empty:
        mask, nuc_mask = torch.zeros_like(mask), torch.zeros_like(nuc_mask)
    upper = randn(size, size).abs().triu(1)
    outputs: dict[str, torch.Tensor] = {
        "count_prediction": randn(size, asvs, 1),
        "nuc_predictions": randn(size, asvs, length, vocab),
    }
    targets: dict[str, torch.Tensor] = {
        "counts": randn(size, asvs, 1),
        "mask": mask,
        "base_target": upper + upper.T,
        "nucleotides": torch.where(
            nuc_mask, torch.randint(0, vocab, (size, asvs, length), generator=gen), -100
        ),
        "nuc_mask": nuc_mask.to(torch.int64),
    }
    padded = {
        "count_prediction": ~mask[..., None],
        "nuc_predictions": (~nuc_mask)[..., None].expand(size, asvs, length, vocab).clone(),
    }
    if classifier:
        outputs["target_prediction"] = torch.log_softmax(randn(size, 3) / scale, dim=-1)
        targets["target"] = torch.arange(size) % 3
    else:
        outputs["target_prediction"] = randn(size, 2)
        targets["target"] = randn(size, 2)
    padded["target_prediction"] = torch.zeros(outputs["target_prediction"].shape, dtype=torch.bool)
    if embeddings is None:
        outputs["base_prediction"] = randn(size, size)
        padded["base_prediction"] = torch.eye(size, dtype=torch.bool)
    else:
        outputs["embeddings"] = embeddings
        padded["embeddings"] = torch.zeros(embeddings.shape, dtype=torch.bool)
    batch = MultiTaskBatch(
        outputs=outputs,
        targets=targets,
        padded=padded,
        is_classifier=classifier,
        loss_kwargs={"penalty": 1.0, "nuc_penalty": 0.5},
    )
    return batch if garbage is None else batch.with_garbage(garbage)


# A remainder batch (B=3 after B=4) and a single-sample one: the slicing bug's inputs.
REMAINDER = _full_batch(3)
SINGLE = _full_batch(1, seed=1)
# No valid ASV or sequence position anywhere.
ALL_PADDING = _full_batch(3, empty=True, seed=2)
# Rows 0 and 2 identical, row 1 a 1e-6 near-duplicate of row 0.
_EMB = torch.tensor([[0.5, -1.0, 2.0], [0.5 + 1e-6, -1.0, 2.0], [0.5, -1.0, 2.0], [3.0, 0.0, 1.0]])
DUPLICATES = _full_batch(4, embeddings=_EMB, classifier=True, seed=3)


def _wide_embeddings() -> torch.Tensor:
    """26 rows of 400 features off the origin, with an exact and a 1e-6 near-duplicate.

    Wider than the generated batches on purpose: torch.cdist switches to its matrix-product
    form above 25 rows (which cancels for near-duplicates), and an implementation may switch
    algorithms with the batch's size as aam does (direct differences up to B²·D = 2^18, the
    Gram form beyond): each form must meet the rule.
    """
    gen = torch.Generator().manual_seed(26)
    rows = torch.randn(26, 400, generator=gen) + 3.0
    rows[1] = rows[0]
    rows[1, 7] += 1e-6 * 4  # float32 spacing at 3.0 is 2.4e-7: a representable nudge
    rows[2] = rows[0]
    return rows


# Rows 0 and 2 identical, row 1 about 1e-6 from both, at a batch size past cdist's switch.
WIDE_DUPLICATES = _full_batch(26, embeddings=_wide_embeddings(), classifier=True, seed=26)
# NaN where the model's outputs are padding.
NAN_PADDING = _full_batch(4, garbage=math.nan, seed=4)


def _equal_logits(batch: MultiTaskBatch, value: float) -> MultiTaskBatch:
    """``batch`` with every nucleotide logit equal to ``value``: the loss is log V exactly.

    Cross-entropy is shift-invariant, so equal logits of any finite size owe log V and the
    gradient softmax - onehot; ``logsumexp(x) - x[y]`` of two huge equal numbers does not
    (aam returned 1.0 for log 2 at 1e7 and 0.0 at finfo.max before it shifted by the max).
    """
    nuc = torch.full_like(batch.outputs["nuc_predictions"], value)
    return dataclasses.replace(batch, outputs={**batch.outputs, "nuc_predictions": nuc})


# Equal logits far from 0: C-REF-1 and C-GRAD-1 owe log V whatever their size.
EQUAL_HUGE_LOGITS = _equal_logits(REMAINDER, 1e7)
EQUAL_MAX_LOGITS = _equal_logits(REMAINDER, float(torch.finfo(torch.float32).max))


def _overflowing_sum(batch: MultiTaskBatch) -> MultiTaskBatch:
    """``batch`` with count errors whose squares are ``finfo.max / 5`` at every valid ASV.

    The mean of the squares is representable (so C-FINITE-1 owes a finite count term), but
    their plain sum over more than 5 valid ASVs is not: a loss that sums before dividing
    overflows.
    """
    half = math.sqrt(float(torch.finfo(batch.dtype).max) / 5) / 2  # (2 half)**2 = max / 5
    valid = batch.targets["mask"].bool()[..., None]
    outputs = dict(batch.outputs)
    outputs["count_prediction"] = torch.where(valid, half, outputs["count_prediction"])
    targets = dict(batch.targets)
    targets["counts"] = torch.where(valid, -half, targets["counts"])
    return dataclasses.replace(batch, outputs=outputs, targets=targets)


# Six valid ASVs whose squared errors are each a fifth of float32's largest value.
OVERFLOWING_SUM = _overflowing_sum(_full_batch(4, asvs=4, seed=7))


def _zero_penalty_overflow(batch: MultiTaskBatch) -> MultiTaskBatch:
    """``batch`` whose count term overflows (errors of ``2 finfo.max``) with count_penalty 0.

    The float64 reference total leaves the zero-penalty term out, so it is finite; a total
    written as ``sum(penalty * term)`` gives ``0 * inf = NaN``.
    """
    big = float(torch.finfo(batch.dtype).max)
    valid = batch.targets["mask"].bool()[..., None]
    outputs = dict(batch.outputs)
    outputs["count_prediction"] = torch.where(valid, big, outputs["count_prediction"])
    targets = dict(batch.targets)
    targets["counts"] = torch.where(valid, -big, targets["counts"])
    kwargs = {**batch.loss_kwargs, "count_penalty": 0.0}
    return dataclasses.replace(batch, outputs=outputs, targets=targets, loss_kwargs=kwargs)


# The zero-penalty total bug (0 * inf = NaN), found in aam and fixed: count_loss is inf.
ZERO_PENALTY_OVERFLOW = _zero_penalty_overflow(_full_batch(3, seed=8))


def _for(term: str, batch: MultiTaskBatch) -> MultiTaskBatch:
    """``batch`` restricted to ``term``'s head (every head for ``total_loss``).

    A per-term row must fail only for its own term: with every head in one ``forward``, one
    head that raises would fail every term's rows (a cascade that hides real per-term bugs).
    """
    return _only_head(batch, term)


def _on(batch: MultiTaskBatch, device: str, term: str) -> MultiTaskBatch:
    """``batch`` for ``term`` (see :func:`_for`), on ``device``."""
    return _for(term, batch).to(device)


# --------------------------------------------------------------------------- C-SCALAR-1


@pytest.mark.rule("C-SCALAR-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=ORDINARY)
@example(batch=REMAINDER)
@example(batch=SINGLE)
@example(batch=ALL_PADDING)
def test_every_term_is_a_0_dim_float(loss_target, contract_device, term, batch):
    check_scalar_terms(loss_target, _on(batch, contract_device, term), term=term)


# --------------------------------------------------------------------------- C-FINITE-1/2


@pytest.mark.rule("C-FINITE-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=FINITE)
@example(batch=ALL_PADDING)
@example(batch=DUPLICATES)
@example(batch=OVERFLOWING_SUM)
def test_finite_inputs_give_finite_values(loss_target, contract_device, term, batch):
    check_finite_values(loss_target, _on(batch, contract_device, term), term=term)


@pytest.mark.rule("C-FINITE-2")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=FINITE)
@example(batch=ALL_PADDING)
@example(batch=DUPLICATES)
@example(batch=SINGLE)
def test_finite_inputs_give_finite_gradients(loss_target, contract_device, term, batch):
    check_finite_gradients(loss_target, _on(batch, contract_device, term), term=term)


# --------------------------------------------------------------------------- C-MASK-1/2


@pytest.mark.rule("C-MASK-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=ORDINARY)
@example(batch=NAN_PADDING)
@example(batch=REMAINDER)
def test_garbage_at_padding_never_changes_a_value(loss_target, contract_device, term, batch):
    check_mask_values(loss_target, _on(batch, contract_device, term), term=term)


@pytest.mark.rule("C-MASK-2")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=ORDINARY)
@example(batch=NAN_PADDING)
@example(batch=REMAINDER)
def test_garbage_at_padding_gets_exactly_zero_gradient(loss_target, contract_device, term, batch):
    check_mask_gradients(loss_target, _on(batch, contract_device, term), term=term)


# --------------------------------------------------------------------------- C-PAD-1


@pytest.mark.rule("C-PAD-1")
@pytest.mark.parametrize("term", ["count_loss", "nuc_loss", "total_loss"])
@given(
    batch=ORDINARY | row_batches(terms=("count", "nuc")),
    extra_asvs=st.integers(0, 3),
    extra_len=st.integers(0, 3),
    extra_rows=st.integers(0, 2),
)
@example(batch=NAN_PADDING, extra_asvs=2, extra_len=2, extra_rows=1)
@example(batch=ALL_PADDING, extra_asvs=1, extra_len=0, extra_rows=0)
def test_more_padding_never_changes_a_value(
    loss_target, contract_device, term, batch, extra_asvs, extra_len, extra_rows
):
    check_padding_invariance(
        loss_target,
        _on(batch, contract_device, term),
        term=term,
        extra_asvs=extra_asvs,
        extra_len=extra_len,
        extra_rows=extra_rows,
    )


# --------------------------------------------------------------------------- C-EMPTY-1


@pytest.mark.rule("C-EMPTY-1")
@pytest.mark.parametrize("term", EMPTIABLE)
@given(batch=row_batches(encoder_type="unifrac"))
@example(batch=ALL_PADDING)
@example(batch=DUPLICATES)
def test_empty_terms_are_zero_and_connected(loss_target, contract_device, term, batch):
    check_empty_terms(loss_target, _on(batch, contract_device, term), term=term)


# --------------------------------------------------------------------------- C-RAGGED-1


@pytest.mark.rule("C-RAGGED-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=ORDINARY)
@example(batch=REMAINDER)
@example(batch=_full_batch(4, seed=5))
@example(batch=DUPLICATES)
def test_every_batch_size_works(loss_target, contract_device, term, batch):
    check_ragged_batches(loss_target, _on(batch, contract_device, term), term=term)


# --------------------------------------------------------------------------- C-SHAPE-1


# Built once: building a batch strategy costs about 4 ms (its composite is compiled), more than
# drawing a small batch, and these tests draw one per example.
_SHAPE_BATCHES = {
    name: multitask_batches(**spec.options) for name, spec in LOSS_SHAPE_CASES.items()
}


@pytest.mark.rule("C-SHAPE-1")
@pytest.mark.parametrize(
    ("term", "case"), [(spec.term, name) for name, spec in LOSS_SHAPE_CASES.items()]
)
@given(data=st.data())
def test_mismatched_shapes_raise_value_error(loss_target, contract_device, term, case, data):
    batch = data.draw(_SHAPE_BATCHES[case], label="batch")
    check_shape_mismatch(loss_target, _on(batch, contract_device, term), term=term, case=case)


@pytest.mark.rule("C-SHAPE-1", term="base_loss")
@pytest.mark.parametrize("batch", [REMAINDER, SINGLE], ids=["B=3", "B=1"])
def test_remainder_batch_base_prediction_is_never_sliced(loss_target, contract_device, batch):
    # The historical bug: a [B, B+1] prediction silently sliced to the [B, B] target.
    check_shape_mismatch(
        loss_target, _on(batch, contract_device, "base_loss"), term="base_loss", case="base_columns"
    )


# --------------------------------------------------------------------------- C-INPUT-1


_INPUT_BATCHES = {
    name: multitask_batches(**spec.options) for name, spec in LOSS_INPUT_CASES.items()
}


@pytest.mark.rule("C-INPUT-1")
@pytest.mark.parametrize(
    ("term", "case"), [(spec.term, name) for name, spec in LOSS_INPUT_CASES.items()]
)
@given(data=st.data())
def test_invalid_values_raise_value_error(loss_target, contract_device, term, case, data):
    batch = data.draw(_INPUT_BATCHES[case], label="batch")
    check_invalid_inputs(loss_target, _on(batch, contract_device, term), term=term, case=case)


# --------------------------------------------------------------------------- C-NONFINITE-1


@pytest.mark.rule("C-NONFINITE-1")
@pytest.mark.parametrize("term", PER_HEAD)
@given(batch=row_batches(min_batch=2, allow_noncontiguous=True), bad=st.integers(1, 4))
@example(batch=REMAINDER, bad=1)
@example(batch=DUPLICATES, bad=3)
@example(batch=ALL_PADDING, bad=2)
def test_nonfinite_valid_predictions_raise_a_telling_error(
    loss_target, contract_device, term, batch, bad
):
    check_nonfinite_detection(loss_target, _on(batch, contract_device, term), term=term, bad=bad)


# --------------------------------------------------------------------------- C-WEIGHT-1


@pytest.mark.rule("C-WEIGHT-1", term="target_loss")
@given(batch=multitask_batches(terms=("target",), classifier=True))
@example(batch=DUPLICATES)
def test_zero_selected_class_weights_give_zero(loss_target, contract_device, batch):
    check_zero_class_weights(
        loss_target, _on(batch, contract_device, "target_loss"), term="target_loss"
    )


# --------------------------------------------------------------------------- C-REF-1


@pytest.mark.rule("C-REF-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=FINITE)
@example(batch=REMAINDER)
@example(batch=DUPLICATES)
@example(batch=NAN_PADDING)
@example(batch=ZERO_PENALTY_OVERFLOW)
@example(batch=EQUAL_HUGE_LOGITS)
@example(batch=EQUAL_MAX_LOGITS)
def test_terms_match_the_float64_reference(loss_target, contract_device, term, batch):
    check_reference_values(loss_target, _on(batch, contract_device, term), term=term)


# --------------------------------------------------------------------------- C-DIST-1


_EMBEDDED = multitask_batches(terms=("base",), encoder_type="unifrac", embeddings=True)


def _huge_embeddings() -> MultiTaskBatch:
    """Rows near float64's finfo.max, whose sum overflows (a Gram form must not centre on it)."""
    big = torch.finfo(torch.float64).max
    rows = [[big], [1.3407807929942596e154], [big * (1 - 2**-52)]]
    emb = torch.tensor(rows, dtype=torch.float64)
    base = torch.full((3, 3), 1.3407807929942596e154, dtype=torch.float64)
    return MultiTaskBatch(
        outputs={"embeddings": emb},
        targets={"base_target": base},
        padded={"embeddings": torch.zeros(emb.shape, dtype=torch.bool)},
        encoder_type="unifrac",
    )


# Found by `mutate`'s dev run on the Gram-form distances: the batch mean overflowed to inf.
HUGE_EMBEDDINGS = _huge_embeddings()
# Found by the thorough profile: subnormal rows, whose distance's gradient was inf (NaN before
# the Gram form): the direct form's scale squared underflowed.
SUBNORMAL_EMBEDDINGS = dataclasses.replace(
    HUGE_EMBEDDINGS,
    outputs={"embeddings": torch.tensor([[5e-324], [-5e-324], [0.0]], dtype=torch.float64)},
)


@pytest.mark.rule("C-DIST-1", term="base_loss")
@given(
    batch=_EMBEDDED
    | multitask_batches(terms=("base",), encoder_type="unifrac", embeddings=True, kind="extreme")
)
@example(batch=DUPLICATES)
@example(batch=WIDE_DUPLICATES)
@example(batch=HUGE_EMBEDDINGS)
@example(batch=SUBNORMAL_EMBEDDINGS)
def test_pairwise_distances_match_the_float64_reference(loss_target, contract_device, batch):
    check_pairwise_distances(
        loss_target, _on(batch, contract_device, "base_loss"), term="base_loss"
    )


# --------------------------------------------------------------------------- C-DTYPE-1


def _as_half(batch: MultiTaskBatch) -> MultiTaskBatch:
    """The float16 version of a hand-built float32 batch (ids, masks and weights unchanged)."""
    return dataclasses.replace(
        batch,
        outputs={k: v.detach().half() for k, v in batch.outputs.items()},
        targets={
            k: v.half() if v.is_floating_point() and k not in ("mask", "nuc_mask") else v
            for k, v in batch.targets.items()
        },
    )


# Values of a few hundred: their squares overflow float16 (max 65504), not float32.
HALF_SQUARES = _as_half(_full_batch(3, scale=300.0, seed=6))


@pytest.mark.rule("C-DTYPE-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=row_batches(dtype=HALVES) | row_batches(dtype=HALVES, kind="extreme"))
@example(batch=HALF_SQUARES)
def test_half_inputs_accumulate_in_float32(loss_target, contract_device, term, batch):
    check_half_precision(loss_target, _on(batch, contract_device, term), term=term)


# --------------------------------------------------------------------------- C-DEVICE-1


@pytest.fixture
def other_device(contract_device):
    """The device C-DEVICE-1 compares with cpu (the cpu parameter has nothing to compare)."""
    if contract_device == "cpu":
        pytest.skip("C-DEVICE-1 compares another device with cpu; cpu alone has nothing to compare")
    return contract_device


@pytest.mark.rule("C-DEVICE-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=ORDINARY)
@example(batch=REMAINDER)
@example(batch=DUPLICATES)
def test_device_results_equal_cpu_results(loss_target, other_device, term, batch):
    check_device_agreement(loss_target, _for(term, batch), term=term, device=other_device)


# --------------------------------------------------------------------------- C-INVARIANT-1


_INVARIANT_BATCHES = st.sampled_from([REMAINDER, DUPLICATES, NAN_PADDING]) | ORDINARY


@pytest.mark.rule("C-INVARIANT-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(data=st.data())
def test_terms_are_nonnegative_permutation_invariant_and_sum_to_the_total(
    loss_target, contract_device, term, data
):
    batch = data.draw(_INVARIANT_BATCHES, label="batch")
    order = data.draw(st.permutations(range(batch.batch_size)), label="permutation")
    check_invariants(loss_target, _on(batch, contract_device, term), term=term, permutation=order)


# --------------------------------------------------------------------------- C-PURE-1


@pytest.mark.rule("C-PURE-1")
@pytest.mark.parametrize("term", LOSS_TERMS)
@given(batch=ORDINARY)
@example(batch=NAN_PADDING)
@example(batch=DUPLICATES)
def test_losses_never_modify_inputs_or_detach_predictions(
    loss_target, contract_device, term, batch
):
    check_purity(loss_target, _on(batch, contract_device, term), term=term)
