"""Properties of the loss input-space strategies (``robustness.strategies``).

Reachability tests search with an explicit example budget (see ``reach``): they prove
that an edge case of the contract's input space (all-padding masks, duplicate embeddings,
zero-sum class weights, ...) is generated at all, which needs more draws than a property run.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import robustness.strategies as rs
from robustness.errors import HarnessUsageError, from_plain, to_plain
from robustness.strategies import (
    FLOAT_DTYPES,
    KINDS,
    MultiTaskBatch,
    dtypes,
    embeddings,
    float_elements,
    masks,
    multitask_batches,
    noncontiguous,
    tensors,
)


class _Found(Exception):
    """Stops a reachability search at its first hit."""


def reach(strategy: st.SearchStrategy[Any], condition: Callable[[Any], bool]) -> Any:
    """Return the first generated example satisfying ``condition``; fail if none is.

    A plain generate-only search (no shrinking: any hit proves reachability), with a budget
    of 3000 draws because rare structure needs more than a property run's examples.
    """
    found: list[Any] = []

    @settings(
        max_examples=3000,
        phases=(Phase.generate,),
        derandomize=True,
        database=None,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def search(value: Any) -> None:
        if condition(value):
            found.append(value)
            raise _Found

    try:
        search()
    except _Found:
        return found[0]
    raise AssertionError(f"{strategy!r} never generated an example satisfying the condition")


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (-0.0 distinct from 0.0); any NaN equals any NaN.

    NaN payloads are not compared: torch may quiet a signalling NaN when it copies one.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return False
    width = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    a_bits = a.detach().contiguous().view(width)[~nan]
    b_bits = b.detach().contiguous().view(width)[~nan]
    return bool(torch.equal(a_bits, b_bits))


def test_public_names_are_exported_exactly() -> None:
    exported = set(rs.__all__)
    # "@py_builtins"/"@pytest_ar": pytest rewrites asserts in the modules of an installed
    # plugin's distribution, which adds these to the namespace; they are not API.
    defined = {name for name in dir(rs) if not name.startswith(("_", "@"))}
    assert exported <= defined
    assert defined - exported <= {"annotations"}


# --------------------------------------------------------------------------- elements


@given(st.data())
def test_float_elements_are_exactly_representable_in_their_dtype(data: st.DataObject) -> None:
    dtype = data.draw(dtypes())
    kind = data.draw(st.sampled_from(KINDS))
    value = data.draw(float_elements(dtype, kind=kind))
    stored = torch.tensor(value, dtype=torch.float64).to(dtype).double().item()
    assert stored == value or (math.isnan(stored) and math.isnan(value))
    if kind != "garbage":
        assert math.isfinite(value)
    if kind == "ordinary":
        assert abs(value) <= 64.0


@given(st.data())
def test_bfloat16_elements_have_zero_low_bits(data: st.DataObject) -> None:
    value = data.draw(float_elements(torch.bfloat16, kind=data.draw(st.sampled_from(KINDS))))
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    assert bits & 0xFFFF == 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("name", "condition"),
    [
        ("finfo.max", lambda v, i: abs(v) == i.max),
        ("near sqrt(max)", lambda v, i: math.sqrt(i.max) / 2 <= abs(v) <= 2 * math.sqrt(i.max)),
        ("tiny", lambda v, i: abs(v) == i.tiny),
        ("subnormal", lambda v, i: 0 < abs(v) < i.tiny),
        ("-0.0", lambda v, i: v == 0 and math.copysign(1, v) < 0),
    ],
)
def test_extreme_elements_reach_every_extreme(
    dtype: torch.dtype, name: str, condition: Callable[[float, Any], bool]
) -> None:
    info = torch.finfo(dtype)
    reach(float_elements(dtype, kind="extreme"), lambda v: condition(v, info))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("name", "condition"),
    [
        ("nan", math.isnan),
        ("+inf", lambda v: v == math.inf),
        ("-inf", lambda v: v == -math.inf),
        ("finite", math.isfinite),
    ],
)
def test_garbage_elements_reach_nan_inf_and_finite(
    dtype: torch.dtype, name: str, condition: Callable[[float], bool]
) -> None:
    reach(float_elements(dtype, kind="garbage"), condition)


def test_dtypes_without_half_never_draw_half() -> None:
    reach(dtypes(), lambda d: d == torch.bfloat16)
    with pytest.raises(AssertionError, match="never generated"):
        reach(dtypes(allow_half=False), lambda d: d in (torch.float16, torch.bfloat16))


# --------------------------------------------------------------------------- tensors, layouts


@given(st.data())
def test_tensors_have_the_requested_shape_dtype_and_values(data: st.DataObject) -> None:
    shape = data.draw(st.lists(st.integers(0, 3), max_size=3).map(tuple))
    dtype = data.draw(dtypes())
    t = data.draw(tensors(shape, dtype=dtype, kind="extreme", allow_noncontiguous=True))
    assert t.shape == shape
    assert t.dtype == dtype
    assert t.device.type == "cpu"
    assert bool(torch.isfinite(t).all())


@given(st.data())
def test_noncontiguous_views_are_equal_and_noncontiguous(data: st.DataObject) -> None:
    shape = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple))
    t = data.draw(tensors(shape, dtype=data.draw(dtypes()), kind="garbage"))
    view = data.draw(noncontiguous(t))
    assert bits_equal(view, t)
    assert view.is_contiguous() == (t.numel() < 2)


def test_tensors_reach_noncontiguous_layouts() -> None:
    reach(
        tensors((2, 3), dtype=torch.float32, allow_noncontiguous=True),
        lambda t: not t.is_contiguous(),
    )


# --------------------------------------------------------------------------- masks


@given(st.data())
def test_masks_have_the_requested_shape_and_dtype(data: st.DataObject) -> None:
    shape = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple))
    mask_dtype = data.draw(st.sampled_from([None, *rs.MASK_DTYPES]))
    mask = data.draw(masks(shape, mask_dtype=mask_dtype))
    assert mask.shape == shape
    if mask_dtype is not None:
        assert mask.dtype == mask_dtype
    assert bool(((mask == 0) | (mask == 1)).all())


def _rows(mask: torch.Tensor) -> list[list[bool]]:
    return (mask != 0).reshape(-1, mask.shape[-1]).tolist()  # type: ignore[no-any-return]


def _interleaved(mask: torch.Tensor) -> bool:
    # A row with padding strictly between two valid positions.
    for row in _rows(mask):
        valid = [i for i, v in enumerate(row) if v]
        if valid and not all(row[valid[0] : valid[-1] + 1]):
            return True
    return False


@pytest.mark.parametrize(
    ("pattern", "condition"),
    [
        ("all valid", lambda m: bool((m != 0).all())),
        ("all padding", lambda m: not bool((m != 0).any())),
        ("single valid", lambda m: int((m != 0).sum()) == 1),
        ("leading padding", lambda m: any(not r[0] and r[-1] for r in _rows(m))),
        ("trailing padding", lambda m: any(r[0] and not r[-1] for r in _rows(m))),
        ("interleaved", _interleaved),
        ("ragged rows", lambda m: len({sum(r) for r in _rows(m)}) > 1),
    ],
)
def test_masks_reach_every_padding_pattern(
    pattern: str, condition: Callable[[torch.Tensor], bool]
) -> None:
    reach(masks((3, 4)), condition)


@pytest.mark.parametrize("mask_dtype", rs.MASK_DTYPES, ids=str)
def test_masks_reach_every_mask_dtype(mask_dtype: torch.dtype) -> None:
    reach(masks((2, 3)), lambda m: m.dtype == mask_dtype)


# --------------------------------------------------------------------------- batches


def assert_consistent(batch: MultiTaskBatch) -> None:
    """Shapes, padding and targets of a batch agree with each other (the batch invariants)."""
    out, tg, padded = batch.outputs, batch.targets, batch.padded
    b = batch.batch_size
    assert set(padded) == set(out)
    for key, t in out.items():
        assert t.shape[0] == b, key
        assert padded[key].shape == t.shape, key
        assert padded[key].dtype == torch.bool, key
        assert t.dtype == batch.dtype, key
    if "target_prediction" in out:
        assert not bool(padded["target_prediction"].any())
        if batch.is_classifier:
            k = out["target_prediction"].shape[1]
            assert tg["target"].shape == (b,)
            assert bool(((tg["target"] >= 0) & (tg["target"] < k)).all())
        else:
            assert tg["target"].shape == out["target_prediction"].shape
    if "count_prediction" in out:
        pred = out["count_prediction"]
        assert pred.ndim == 3
        assert pred.shape[-1] == 1
        assert tg["counts"].shape == pred.shape
        assert tg["mask"].shape == pred.shape[:-1]
        assert torch.equal(padded["count_prediction"], (tg["mask"] == 0).unsqueeze(-1))
    if "nuc_predictions" in out:
        logits = out["nuc_predictions"]
        v = logits.shape[-1]
        assert tg["nucleotides"].shape == logits.shape[:-1]
        assert tg["nuc_mask"].shape == logits.shape[:-1]
        expected = (tg["nuc_mask"] == 0).unsqueeze(-1).expand(logits.shape)
        assert torch.equal(padded["nuc_predictions"], expected)
        ids = tg["nucleotides"][tg["nuc_mask"] != 0]
        assert bool(((ids >= 0) & (ids < v)).all())
        if "mask" in tg:
            # A sequence position is valid only inside a valid ASV.
            assert not bool(((tg["nuc_mask"] != 0) & (tg["mask"] == 0).unsqueeze(-1)).any())
    if "base_target" in tg:
        true = tg["base_target"]
        if batch.encoder_type == "unifrac":
            assert true.shape == (b, b)
            assert torch.equal(true, true.T)
            assert bool((true.diagonal() == 0).all())
            if "base_prediction" in out:
                assert torch.equal(padded["base_prediction"], torch.eye(b, dtype=torch.bool))
        else:
            assert true.shape == (b, 1)
            assert "embeddings" not in out
            assert not bool(padded["base_prediction"].any())
    if "embeddings" in out:
        assert batch.encoder_type == "unifrac"
        assert "base_prediction" not in out
        assert not bool(padded["embeddings"].any())


@given(multitask_batches(allow_noncontiguous=True))
def test_batches_are_consistent(batch: MultiTaskBatch) -> None:
    assert_consistent(batch)


@given(st.data())
def test_batches_hold_only_the_requested_heads(data: st.DataObject) -> None:
    terms = data.draw(st.sets(st.sampled_from(rs.TERMS), min_size=1).map(tuple))
    batch = data.draw(multitask_batches(terms=terms))
    assert set(batch.terms) == set(terms)
    assert_consistent(batch)


@given(st.data())
def test_batches_hold_values_only_for_values_for(data: st.DataObject) -> None:
    terms = data.draw(st.sets(st.sampled_from(rs.TERMS), min_size=1).map(tuple))
    values_for = data.draw(st.sets(st.sampled_from(terms), min_size=1).map(tuple))
    batch = data.draw(multitask_batches(terms=terms, values_for=values_for))
    assert set(batch.terms) == set(values_for)
    assert_consistent(batch)


def test_values_for_still_draws_the_other_heads_options() -> None:
    # A count row restricted from a batch of every head saw classifier, class-weight and
    # faith_pd options; drawing only the count head's values must keep them.
    only_count = multitask_batches(values_for=("count",))
    reach(only_count, lambda b: b.is_classifier and "class_weights" in b.loss_kwargs)
    reach(only_count, lambda b: b.encoder_type == "faith_pd")
    reach(only_count, lambda b: b.loss_kwargs.get("target_loss_type") == "huber")


@given(st.data())
def test_batches_respect_fixed_options(data: st.DataObject) -> None:
    dtype = data.draw(dtypes())
    classifier = data.draw(st.booleans())
    encoder = data.draw(st.sampled_from(rs.ENCODER_TYPES))
    use_embeddings = encoder == "unifrac" and data.draw(st.booleans())
    mask_dtype = data.draw(st.sampled_from(rs.MASK_DTYPES))
    batch = data.draw(
        multitask_batches(
            dtype=dtype,
            classifier=classifier,
            encoder_type=encoder,
            embeddings=use_embeddings,
            mask_dtype=mask_dtype,
            min_batch=2,
            max_batch=3,
        )
    )
    assert batch.dtype == dtype
    assert batch.is_classifier == classifier
    assert batch.encoder_type == encoder
    assert ("embeddings" in batch.outputs) == use_embeddings
    assert batch.targets["mask"].dtype == mask_dtype
    assert batch.targets["nuc_mask"].dtype == mask_dtype
    assert 2 <= batch.batch_size <= 3


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_batch_values_at_valid_positions_are_of_the_requested_kind(
    kind: str, data: st.DataObject
) -> None:
    batch = data.draw(multitask_batches(kind=kind, terms=("count", "base", "nuc")))
    for key, t in batch.outputs.items():
        valid = t[batch.valid(key)].double()
        if kind != "garbage":
            assert bool(torch.isfinite(valid).all()), key
        if kind == "ordinary":
            assert bool((valid.abs() <= 64).all()), key
    for key in ("counts", "base_target"):
        if key in batch.targets:
            # Truths follow the kind, but stay finite when the kind is garbage.
            assert bool(torch.isfinite(batch.targets[key]).all())


@pytest.mark.parametrize(
    ("case", "kwargs", "condition"),
    [
        ("B = 1", {}, lambda b: b.batch_size == 1),
        ("B = max", {}, lambda b: b.batch_size == 6),
        ("count all padding", {}, lambda b: not bool(b.targets["mask"].bool().any())),
        ("count all valid", {}, lambda b: bool(b.targets["mask"].bool().all())),
        (
            "ASV valid, sequence empty",
            {"terms": ("nuc", "count")},
            lambda b: bool(
                ((b.targets["mask"] != 0) & ~(b.targets["nuc_mask"] != 0).any(-1)).any()
            ),
        ),
        ("float mask", {}, lambda b: b.targets["mask"].is_floating_point()),
        ("int mask", {}, lambda b: b.targets["mask"].dtype == torch.int64),
        ("bfloat16", {}, lambda b: b.dtype == torch.bfloat16),
        ("faith_pd", {}, lambda b: b.encoder_type == "faith_pd"),
        ("embeddings", {}, lambda b: "embeddings" in b.outputs),
        ("classifier", {}, lambda b: b.is_classifier),
        ("zero penalty", {}, lambda b: b.loss_kwargs["penalty"] == 0.0),
        (
            "huber",
            {"classifier": False},
            lambda b: b.loss_kwargs["target_loss_type"] == "huber",
        ),
        (
            "absent class",
            {"classifier": True, "min_batch": 3},
            lambda b: (
                len(set(b.targets["target"].tolist())) < b.outputs["target_prediction"].shape[1]
            ),
        ),
        (
            "zero class weight",
            {"classifier": True, "class_weights": True},
            lambda b: bool((b.loss_kwargs["class_weights"] == 0).any()),
        ),
        (
            "selected class weights sum to 0",
            {"classifier": True, "class_weights": True, "min_batch": 2},
            lambda b: (
                float(b.loss_kwargs["class_weights"][b.targets["target"]].sum()) == 0.0
                and bool((b.loss_kwargs["class_weights"] > 0).any())
            ),
        ),
        (
            "duplicate embeddings",
            {"embeddings": True, "min_batch": 2},
            lambda b: _has_pair(b.outputs["embeddings"], lambda d: d == 0),
        ),
        (
            "near-duplicate embeddings",
            {"embeddings": True, "dtype": torch.float64, "min_batch": 2},
            lambda b: _has_pair(b.outputs["embeddings"], lambda d: 0 < d <= 1.5e-6),
        ),
        (
            "noncontiguous output",
            {"allow_noncontiguous": True},
            lambda b: any(not t.is_contiguous() for t in b.outputs.values()),
        ),
    ],
)
def test_batches_reach_every_edge_case(
    case: str, kwargs: dict[str, Any], condition: Callable[[MultiTaskBatch], bool]
) -> None:
    reach(multitask_batches(**kwargs), condition)


def _has_pair(rows: torch.Tensor, condition: Callable[[float], bool]) -> bool:
    """Whether some pair of distinct rows has a max-abs difference satisfying ``condition``."""
    r = rows.double()
    n = r.shape[0]
    return any(
        condition(float((r[i] - r[j]).abs().max())) for i in range(n) for j in range(i + 1, n)
    )


# --------------------------------------------------------------------------- embeddings


@given(embeddings(dtype=torch.float32, dim=3))
def test_embeddings_have_the_requested_dtype_and_width(rows: torch.Tensor) -> None:
    assert rows.dtype == torch.float32
    assert rows.ndim == 2
    assert rows.shape[1] == 3
    assert 1 <= rows.shape[0] <= 6
    assert bool(torch.isfinite(rows).all())


@pytest.mark.parametrize(
    ("case", "condition"),
    [
        ("B = 1", lambda e: e.shape[0] == 1),
        ("exact duplicate", lambda e: _has_pair(e, lambda d: d == 0)),
        ("1e-6 apart", lambda e: _has_pair(e, lambda d: abs(d - 1e-6) < 1e-12)),
    ],
)
def test_embeddings_reach_duplicates_and_near_duplicates(
    case: str, condition: Callable[[torch.Tensor], bool]
) -> None:
    reach(embeddings(dtype=torch.float64), condition)


def _near_in_half(rows: torch.Tensor) -> bool:
    """Two rows differing in one float16 component by ~1e-6 or by one ulp."""
    n = rows.shape[0]
    for i in range(n):
        for j in range(n):
            differ = (rows[i] != rows[j]).nonzero().reshape(-1)
            if i == j or differ.numel() != 1:
                continue
            a, b = rows[i, differ[0]], rows[j, differ[0]]
            one_ulp = bool(torch.nextafter(a, b) == b)
            if one_ulp or abs(float(b) - float(a) - 1e-6) < 1e-7:
                return True
    return False


def test_half_precision_near_duplicates_are_as_near_as_the_dtype_allows() -> None:
    reach(embeddings(dtype=torch.float16, min_batch=2), _near_in_half)


# --------------------------------------------------------------------------- the batch's methods


@given(
    multitask_batches(allow_noncontiguous=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 3.0e38, 0.0]),
)
def test_with_garbage_changes_only_padded_positions(batch: MultiTaskBatch, fill: float) -> None:
    garbage = batch.with_garbage(fill)
    assert_consistent(garbage)
    for key, before in batch.outputs.items():
        after = garbage.outputs[key]
        valid = batch.valid(key)
        assert bits_equal(after[valid], before[valid]), key
        expected = torch.tensor(fill, dtype=torch.float64).to(before.dtype)
        written = after[batch.padded[key]]
        assert bool((written == expected).all() or torch.isnan(written).all()), key
        assert after.is_contiguous() == before.is_contiguous(), key
    for key, t in batch.targets.items():
        assert bits_equal(garbage.targets[key], t), key


@given(multitask_batches(terms=("count",)), st.data())
def test_with_garbage_accepts_a_same_shape_tensor(batch: MultiTaskBatch, data: Any) -> None:
    pred = batch.outputs["count_prediction"]
    fill = data.draw(tensors(tuple(pred.shape), dtype=pred.dtype, kind="garbage"))
    garbage = batch.with_garbage(fill).outputs["count_prediction"]
    padded = batch.padded["count_prediction"]
    assert bits_equal(garbage[padded], fill[padded])
    assert bits_equal(garbage[~padded], pred[~padded])


def test_with_garbage_rejects_a_fill_of_the_wrong_shape() -> None:
    batch = reach(
        multitask_batches(terms=("count",)),
        lambda b: bool(b.padded["count_prediction"].any()),
    )
    with pytest.raises(HarnessUsageError, match="fill tensor of shape"):
        batch.with_garbage(torch.zeros(99))


@given(multitask_batches())
def test_with_grad_gives_leaf_outputs_that_require_grad(batch: MultiTaskBatch) -> None:
    grad = batch.with_grad()
    for key, t in grad.outputs.items():
        assert t.requires_grad, key
        assert t.is_leaf, key
        assert bits_equal(t.detach(), batch.outputs[key]), key
        assert not batch.outputs[key].requires_grad, key
    garbage = grad.with_garbage(math.nan)
    assert all(t.requires_grad and t.is_leaf for t in garbage.outputs.values())
    assert batch.requires_grad_() is batch
    assert all(t.requires_grad for t in batch.outputs.values())


def _round_trip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_batch(a: MultiTaskBatch, b: MultiTaskBatch) -> None:
    for name in ("outputs", "targets", "padded"):
        left, right = getattr(a, name), getattr(b, name)
        assert list(left) == list(right), name
        for key in left:
            assert bits_equal(left[key].detach(), right[key].detach()), (name, key)
    for key, t in a.outputs.items():
        assert b.outputs[key].requires_grad == t.requires_grad, key
        assert b.outputs[key].is_contiguous() == t.is_contiguous(), key
    assert (a.is_classifier, a.encoder_type, a.kind) == (b.is_classifier, b.encoder_type, b.kind)
    assert a.loss_kwargs.keys() == b.loss_kwargs.keys()
    for key, value in a.loss_kwargs.items():
        other = b.loss_kwargs[key]
        if isinstance(value, torch.Tensor):
            assert bits_equal(value, other), key
        else:
            assert value == other, key
            assert type(value) is type(other), key


@given(multitask_batches(kind="garbage", allow_noncontiguous=True), st.booleans())
def test_to_plain_round_trips_through_a_weights_only_file(
    batch: MultiTaskBatch, grad: bool
) -> None:
    if grad:
        batch = batch.with_grad()
    assert_same_batch(batch, MultiTaskBatch.from_plain(_round_trip(batch.to_plain())))
    # The generic repro path (ReplaySpec) goes through errors.to_plain / from_plain.
    assert_same_batch(batch, from_plain(_round_trip(to_plain({"batch": batch})))["batch"])


def test_from_plain_names_a_missing_field() -> None:
    with pytest.raises(HarnessUsageError, match="missing field 'targets'"):
        MultiTaskBatch.from_plain({"outputs": {}})


@given(batch=multitask_batches())
def test_to_device_moves_every_tensor(batch: MultiTaskBatch, contract_device: str) -> None:
    moved = batch.with_grad().to(contract_device)
    tensors_ = [*moved.outputs.values(), *moved.targets.values(), *moved.padded.values()]
    weights = moved.loss_kwargs.get("class_weights")
    tensors_ += [weights] if weights is not None else []
    assert all(t.device.type == contract_device for t in tensors_)
    assert all(t.is_leaf and t.requires_grad for t in moved.outputs.values())
    assert_same_batch(batch.with_grad(), moved.to("cpu"))


@given(multitask_batches())
def test_describe_names_sizes_dtype_heads_and_padding(batch: MultiTaskBatch) -> None:
    text = repr(batch)
    assert text == batch.describe()
    assert f"B={batch.batch_size}" in text
    assert str(batch.dtype).removeprefix("torch.") in text
    for key, pad in batch.padded.items():
        assert f"outputs['{key}']" in text
        assert f"{int(pad.sum())}/{pad.numel()} padded" in text
    if "mask" in batch.targets:
        assert f"targets['mask']: {tuple(batch.targets['mask'].shape)} " in text


@given(multitask_batches(), st.data())
def test_term_inputs_are_the_positional_arguments_of_compute(
    batch: MultiTaskBatch, data: st.DataObject
) -> None:
    out, tg = batch.outputs, batch.targets
    expected: dict[str, tuple[Any, ...]] = {
        "target": (out["target_prediction"], tg["target"], batch.is_classifier),
        "count": (out["count_prediction"], tg["counts"], tg["mask"]),
        "nuc": (out["nuc_predictions"], tg["nucleotides"], tg["nuc_mask"]),
    }
    if "base_prediction" in out:
        expected["base"] = (out["base_prediction"], tg["base_target"], batch.encoder_type)
    for term, args in expected.items():
        alias = data.draw(st.sampled_from([term, f"{term}_loss"]))
        got = batch.term_inputs(alias)
        assert len(got) == len(args)
        assert all(g is a for g, a in zip(got, args, strict=True)), term


def test_term_inputs_for_embeddings_need_a_pairwise_function() -> None:
    batch = reach(multitask_batches(embeddings=True), lambda b: True)
    with pytest.raises(HarnessUsageError, match="pairwise="):
        batch.term_inputs("base")
    pred, true, encoder = batch.term_inputs("base", pairwise=_cdist)
    assert pred.shape == true.shape == (batch.batch_size, batch.batch_size)
    assert encoder == "unifrac"


def _cdist(e: torch.Tensor) -> torch.Tensor:
    return torch.cdist(e.double(), e.double())


def test_term_inputs_name_an_absent_head() -> None:
    batch = reach(multitask_batches(terms=("count",)), lambda b: True)
    with pytest.raises(HarnessUsageError, match="no 'nuc' head"):
        batch.term_inputs("nuc_loss")
    with pytest.raises(HarnessUsageError, match="unknown term 'bogus'"):
        batch.term_inputs("bogus")


# --------------------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: multitask_batches(max_batch=0), "max_batch=0"),
        (lambda: multitask_batches(min_batch=0), "min_batch=0"),
        (lambda: multitask_batches(min_batch=4, max_batch=2), "max_batch=2 < min_batch=4"),
        (lambda: multitask_batches(max_asvs=0), "max_asvs=0"),
        (lambda: multitask_batches(max_len=-1), "max_len=-1"),
        (lambda: multitask_batches(vocab=0), "vocab=0"),
        (lambda: multitask_batches(max_batch=2.5), "max_batch=2.5"),
        (lambda: multitask_batches(terms=()), "terms=()"),
        (lambda: multitask_batches(terms=("count", "bogus")), "'bogus'"),
        (lambda: multitask_batches(terms="count"), "terms='count'"),
        (lambda: multitask_batches(dtype=torch.int64), "dtype=torch.int64"),
        (lambda: multitask_batches(kind="weird"), "kind='weird'"),
        (lambda: multitask_batches(truth_kind="weird"), "kind='weird'"),
        (lambda: multitask_batches(encoder_type="l2"), "encoder_type='l2'"),
        (lambda: multitask_batches(classifier="yes"), "classifier='yes'"),
        (lambda: multitask_batches(mask_dtype=torch.float16), "mask_dtype=torch.float16"),
        (
            lambda: multitask_batches(embeddings=True, encoder_type="faith_pd"),
            "encoder_type='unifrac'",
        ),
        (lambda: multitask_batches(embeddings=True, terms=("count",)), "add 'base'"),
        (
            lambda: multitask_batches(class_weights=True, classifier=False),
            "classifier=True",
        ),
        (lambda: multitask_batches(values_for="count"), "values_for='count'"),
        (lambda: multitask_batches(terms=("count",), values_for=("nuc",)), "values_for=('nuc',)"),
        (lambda: multitask_batches(values_for=()), "values_for=()"),
        (lambda: embeddings(max_batch=0), "max_batch=0"),
        (lambda: embeddings(dim=0), "dim=0"),
        (lambda: float_elements(torch.int32), "dtype=torch.int32"),
        (lambda: float_elements(torch.float32, kind="nan"), "kind='nan'"),
        (lambda: tensors((2, -1), dtype=torch.float32), "shape=(2, -1)"),
        (lambda: tensors((2,), dtype=torch.float32, allow_noncontiguous=1), "allow_noncontig"),
        (lambda: masks(()), "at least one dimension"),
        (lambda: masks((2,), mask_dtype=torch.complex64), "mask_dtype=torch.complex64"),
        (lambda: dtypes(allow_half="no"), "allow_half='no'"),
        (lambda: noncontiguous(np.zeros(3)), "needs a torch.Tensor"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_arguments_raise_at_build_time(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(HarnessUsageError) as info:
        build()
    assert message in str(info.value)
