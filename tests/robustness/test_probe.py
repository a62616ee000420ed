"""Tests of the C-WEIGHTS-1 probe model, its injectors, and proof that the weight checks fail.

The broken losses are small subclasses of the built-in ``MultiTaskLoss``: each reintroduces one
historical mistake (masking by multiplication, a naive sqrt for pairwise distances, skipping the
non-finite check). Each must be caught by the check it is aimed at, while the built-in loss
passes the same check.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from aam.training.losses import MultiTaskLoss, compute_pairwise_distances
from aam.training.safety import FiniteStepGuard
from robustness.errors import (
    ContractViolation,
    HarnessUsageError,
    from_plain,
    resolve_qualified_name,
)
from robustness.probe import (
    PROBE_OUTPUT_KEYS,
    OutputInjector,
    ProbeModel,
    inject,
    probe_inputs,
    valid_output_keys,
)
from robustness.properties import _weights
from robustness.properties._weights import (
    OPTIMIZERS,
    check_nonfinite_batch_leaves_weights_unchanged,
    check_weights_stay_finite,
    make_optimizer,
)
from robustness.strategies import MultiTaskBatch, multitask_batches
from robustness.target import LossTarget, load_loss_target

GARBAGE = st.sampled_from(["nan", "inf", "-inf", "max", "-max"])
NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def _garbage(name: str, dtype: torch.dtype) -> float:
    if name.endswith("max"):
        return -torch.finfo(dtype).max if name.startswith("-") else torch.finfo(dtype).max
    return float(name)


def _target(cls: type) -> LossTarget:
    return LossTarget(f"{__name__}:{cls.__name__}", cls, compute_pairwise_distances)


# --------------------------------------------------------------------------- broken losses


class MultiplicativeCountMask(MultiTaskLoss):
    """Masks the count term by multiplying with the mask: garbage * 0 = nan."""

    def compute_count_loss(self, count_pred, count_true, mask):
        m = (mask != 0).unsqueeze(-1).to(count_pred.dtype)
        return ((count_pred - count_true) ** 2 * m).sum() / m.sum().clamp_min(1)


class MultiplicativeNucMask(MultiTaskLoss):
    """Takes log_softmax of every position, then zeroes the padded ones by multiplication."""

    def compute_nucleotide_loss(self, nuc_pred, nuc_true, mask):
        m = (mask != 0).to(nuc_pred.dtype)
        ids = torch.where(mask != 0, nuc_true, 0).long()
        nll = -F.log_softmax(nuc_pred.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return (nll * m).sum() / m.sum().clamp_min(1)


class NaivePairwiseDistances(MultiTaskLoss):
    """sqrt(sum(diff²)) for embeddings: the zero diagonal has an infinite sqrt derivative."""

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        outputs = dict(outputs)
        if encoder_type == "unifrac" and "embeddings" in outputs:
            emb = outputs.pop("embeddings")
            diff = emb[:, None, :] - emb[None, :, :]
            outputs["base_prediction"] = diff.square().sum(-1).sqrt()
        return super().forward(outputs, targets, is_classifier, encoder_type)


class UncheckedCount(MultiTaskLoss):
    """Masks by selection but never checks valid values: NaN at a valid ASV is returned."""

    def compute_count_loss(self, count_pred, count_true, mask):
        valid = (mask != 0).unsqueeze(-1)
        diff = torch.where(valid, count_pred - count_true, 0.0)
        return diff.square().sum() / valid.sum().clamp_min(1)


class SilentlyIgnoresNonFinite(MultiTaskLoss):
    """Treats non-finite predictions as padding: a silently wrong finite loss."""

    def compute_count_loss(self, count_pred, count_true, mask):
        ok = (mask != 0) & torch.isfinite(count_pred).squeeze(-1)
        return super().compute_count_loss(count_pred, count_true, ok)


BUILTIN = load_loss_target()


# --------------------------------------------------------------------------- fixed batches


def _count_nuc_batch(dtype: torch.dtype = torch.float32) -> MultiTaskBatch:
    """B = 2, A = 3, L = 2, V = 3: sample 1 has one ASV, sample 0 two; count and nuc heads."""
    mask = torch.tensor([[True, True, False], [True, False, False]])
    nuc_mask = torch.tensor([[[1, 1], [1, 0], [0, 0]], [[1, 1], [0, 0], [0, 0]]]) != 0
    ids = torch.tensor([[[0, 2], [1, 0], [0, 0]], [[2, 2], [0, 0], [0, 0]]])
    return MultiTaskBatch(
        outputs={
            "count_prediction": torch.zeros(2, 3, 1, dtype=dtype),
            "nuc_predictions": torch.zeros(2, 3, 2, 3, dtype=dtype),
        },
        targets={
            "counts": torch.tensor([[[2.0], [1.0], [0.0]], [[4.0], [0.0], [0.0]]], dtype=dtype),
            "mask": mask,
            "nucleotides": torch.where(nuc_mask, ids, 3),
            "nuc_mask": nuc_mask,
        },
        padded={
            "count_prediction": ~mask[..., None],
            "nuc_predictions": (~nuc_mask)[..., None].expand(2, 3, 2, 3).clone(),
        },
    )


def _embeddings_batch() -> MultiTaskBatch:
    """B = 3 unifrac embeddings (no padding at all) against finite distances."""
    return MultiTaskBatch(
        outputs={"embeddings": torch.zeros(3, 2)},
        targets={"base_target": torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.5], [2.0, 1.5, 0.0]])},
        padded={"embeddings": torch.zeros(3, 2, dtype=torch.bool)},
    )


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --------------------------------------------------------------------------- the probe model


@given(batch=multitask_batches())
def test_probe_produces_every_head_of_the_batch_with_its_shape_and_dtype(batch):
    model = ProbeModel.for_batch(batch)
    outputs = model(*probe_inputs(batch))
    assert set(outputs) == set(batch.outputs)
    for key, out in outputs.items():
        assert out.shape == batch.outputs[key].shape, key
        assert out.dtype == batch.dtype, key
        assert out.requires_grad, key
        assert torch.isfinite(out).all(), key
    if batch.is_classifier and "target_prediction" in outputs:
        probs = outputs["target_prediction"].double().exp().sum(-1)
        torch.testing.assert_close(probs, torch.ones_like(probs), rtol=1e-2, atol=1e-2)


@given(batch=multitask_batches(terms=("nuc",)), pad_id=st.sampled_from([-100, 10**6]))
def test_probe_outputs_ignore_padded_nucleotide_ids(batch, pad_id):
    model = ProbeModel.for_batch(batch)
    tokens, token_mask, asv_mask = probe_inputs(batch)
    changed = torch.where(token_mask, tokens, pad_id)
    first = model(tokens, token_mask, asv_mask)["nuc_predictions"]
    second = model(changed, token_mask, asv_mask)["nuc_predictions"]
    assert torch.equal(first, second)


def test_probe_init_is_deterministic_in_the_seed_and_leaves_the_global_rng_alone():
    batch = _count_nuc_batch()
    rng = torch.get_rng_state()
    a, b = ProbeModel.for_batch(batch, seed=3), ProbeModel.for_batch(batch, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    c = ProbeModel.for_batch(batch, seed=4)
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name


def test_probe_has_a_few_hundred_parameters():
    model = ProbeModel(
        output_keys=PROBE_OUTPUT_KEYS, vocab=6, target_dim=4, embedding_dim=3, is_classifier=True
    )
    assert 100 <= model.num_parameters() <= 1000
    assert "parameters=" in repr(model)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_keys": ()}, "output_keys"),
        ({"output_keys": ("logits",)}, "output_keys"),
        ({"output_keys": ("embeddings",), "vocab": 0}, "vocab"),
        ({"output_keys": ("embeddings",), "encoder_type": "jaccard"}, "encoder_type"),
        ({"output_keys": ("embeddings",), "output_dtype": torch.int64}, "output_dtype"),
    ],
    ids=["no-keys", "unknown-key", "vocab-0", "encoder", "int-dtype"],
)
def test_probe_rejects_bad_arguments(kwargs, match):
    with pytest.raises(HarnessUsageError, match=match):
        ProbeModel(**kwargs)


# --------------------------------------------------------------------------- the injectors


@given(batch=multitask_batches(), garbage=GARBAGE)
def test_garbage_hook_overwrites_exactly_the_padded_positions(batch, garbage):
    garbage = _garbage(garbage, batch.dtype)
    model = ProbeModel.for_batch(batch)
    inputs = probe_inputs(batch)
    clean = model(*inputs)
    handle = OutputInjector.at_padding(batch, garbage).attach(model)
    dirty = model(*inputs)
    handle.remove()
    after = model(*inputs)
    assert all(torch.equal(after[key], clean[key]) for key in clean)  # removable
    for key, out in dirty.items():
        padded = batch.padded[key]
        expected = torch.tensor(garbage, dtype=torch.float64).to(out.dtype)
        # Valid positions: bit-identical. Padded positions: the garbage (NaN compares unequal).
        assert torch.equal(torch.where(padded, 0.0, out), torch.where(padded, 0.0, clean[key]))
        at_padding = torch.where(padded, out, expected)
        if math.isnan(garbage):
            assert at_padding.isnan().all(), key
        else:
            assert (at_padding == expected).all(), key


@given(batch=multitask_batches(kind="ordinary"), garbage=GARBAGE)
def test_garbage_is_straight_through_and_keeps_the_graph(batch, garbage):
    garbage = _garbage(garbage, batch.dtype)
    # Gradients sent to padded positions reach the parameters exactly as they would without the
    # garbage, and gradients at valid positions are unchanged: the graph is the model's own.
    model = ProbeModel.for_batch(batch)
    inputs = probe_inputs(batch)
    params = list(model.parameters())
    clean = model(*inputs)
    dirty = OutputInjector.at_padding(batch, garbage)(clean)
    for key in clean:
        for weight in (batch.padded[key], ~batch.padded[key]):
            seed = weight.to(clean[key].dtype)
            g_clean = torch.autograd.grad(
                clean[key], params, seed, retain_graph=True, allow_unused=True
            )
            g_dirty = torch.autograd.grad(
                dirty[key], params, seed, retain_graph=True, allow_unused=True
            )
            for gc, gd in zip(g_clean, g_dirty, strict=True):
                assert (gc is None) == (gd is None)
                if gc is not None:
                    assert torch.equal(gc, gd), key


@given(batch=multitask_batches(), value=NONFINITE, position=st.integers(0, 1000))
def test_valid_injector_writes_one_valid_position(batch, value, position):
    keys = valid_output_keys(batch)
    assume(keys)
    injector = OutputInjector.at_valid_position(batch, value, key=keys[-1], position=position)
    ((key, where),) = injector.positions.items()
    assert key == keys[-1]
    assert int(where.sum()) == 1
    assert not (where & batch.padded[key]).any()
    model = ProbeModel.for_batch(batch)
    out = injector(model(*probe_inputs(batch)))[key]
    assert int((~torch.isfinite(out)).sum()) == 1


def test_injectors_reject_misuse():
    batch = _count_nuc_batch()
    with pytest.raises(HarnessUsageError, match="embeddings"):
        OutputInjector.at_valid_position(batch, math.nan, key="embeddings")
    all_padding = MultiTaskBatch(
        outputs={"count_prediction": torch.zeros(1, 2, 1)},
        targets={"counts": torch.zeros(1, 2, 1), "mask": torch.zeros(1, 2)},
        padded={"count_prediction": torch.ones(1, 2, 1, dtype=torch.bool)},
    )
    with pytest.raises(HarnessUsageError, match="no valid position"):
        OutputInjector.at_valid_position(all_padding, math.nan)
    with pytest.raises(HarnessUsageError, match="shape"):
        inject({"a": torch.zeros(2)}, {"a": torch.zeros(3, dtype=torch.bool)}, math.nan)


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("optimizer", tuple(OPTIMIZERS))
@pytest.mark.parametrize("garbage", [math.nan, math.inf, -math.inf, 3.0e38])
def test_builtin_loss_passes_both_weight_checks(optimizer, garbage):
    for batch in (_count_nuc_batch(), _count_nuc_batch(torch.bfloat16), _embeddings_batch()):
        check_weights_stay_finite(BUILTIN, batch, optimizer=optimizer, steps=3, garbage=garbage)
        check_nonfinite_batch_leaves_weights_unchanged(
            BUILTIN, batch, optimizer=optimizer, value=garbage if garbage != 3.0e38 else math.nan
        )


@pytest.mark.parametrize("optimizer", tuple(OPTIMIZERS))
@pytest.mark.parametrize("garbage", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("broken", "head"),
    [(MultiplicativeCountMask, "count"), (MultiplicativeNucMask, "nuc")],
    ids=["count-multiplied", "nuc-multiplied"],
)
def test_multiplicative_masking_is_a_weights_violation(optimizer, garbage, broken, head):
    with pytest.raises(ContractViolation) as info:
        check_weights_stay_finite(
            _target(broken), _count_nuc_batch(), optimizer=optimizer, steps=3, garbage=garbage
        )
    violation = info.value
    assert (violation.rule, violation.term) == ("C-WEIGHTS-1", "total_loss")
    assert "became non-finite after optimizer step 1 of 3" in violation.headline
    assert (
        f"heads.{'count_prediction' if head == 'count' else 'nuc_predictions'}"
        in (violation.details["non-finite parameters"])
    )
    assert f"{head}_loss=nan" in violation.details["loss terms"]


@given(batch=multitask_batches(terms=("count",), kind="ordinary"), garbage=GARBAGE)
def test_multiplicative_count_mask_is_caught_on_generated_batches(batch, garbage):
    # Even with count_penalty = 0 the NaN gets through: 0 * nan = nan in the backward pass.
    assume(bool(batch.padded["count_prediction"].any()))
    with pytest.raises(ContractViolation, match="C-WEIGHTS-1"):
        check_weights_stay_finite(
            _target(MultiplicativeCountMask),
            batch,
            optimizer="sgd",
            steps=1,
            garbage=_garbage(garbage, batch.dtype),
        )


@pytest.mark.parametrize("optimizer", tuple(OPTIMIZERS))
def test_naive_pairwise_sqrt_is_a_weights_violation_without_any_garbage(optimizer):
    # Embeddings have no padding; the diagonal of their distances is an exact duplicate, where
    # d sqrt(x)/dx = inf and 0 * inf = nan: the "watch embeddings" lesson.
    with pytest.raises(ContractViolation, match="became non-finite") as info:
        check_weights_stay_finite(
            _target(NaivePairwiseDistances), _embeddings_batch(), optimizer=optimizer, steps=2
        )
    assert "heads.embeddings" in info.value.details["non-finite gradients"]


@pytest.mark.parametrize("optimizer", tuple(OPTIMIZERS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "broken", [UncheckedCount, SilentlyIgnoresNonFinite], ids=["returns-nan", "ignores-nan"]
)
def test_loss_that_returns_on_a_nonfinite_valid_output_is_a_violation(optimizer, value, broken):
    with pytest.raises(ContractViolation) as info:
        check_nonfinite_batch_leaves_weights_unchanged(
            _target(broken),
            _count_nuc_batch(),
            optimizer=optimizer,
            value=value,
            key="count_prediction",
            position=1,
        )
    violation = info.value
    assert violation.rule == "C-WEIGHTS-1"
    assert "count_prediction" in violation.headline
    assert "count_prediction[0, 1, 0]" in violation.details["injected"]
    assert "optimizer.step() ran" in violation.details["loss"]
    assert "heads.count_prediction.weight" in violation.details["changed parameters"]


def test_aam_step_guard_keeps_weights_when_gradients_are_nonfinite():
    # The harness never relies on aam's guard, but a training loop with it survives a loss
    # that returns NaN: the step is skipped and every parameter stays bit-identical.
    batch = _count_nuc_batch()
    model = ProbeModel.for_batch(batch)
    guard = FiniteStepGuard(make_optimizer("adam", model.parameters()))
    loss_fn = UncheckedCount()
    inputs = probe_inputs(batch)

    def step(injector: OutputInjector | None) -> bool:
        guard.optimizer.zero_grad()
        outputs = model(*inputs)
        outputs = injector(outputs) if injector else outputs
        loss_fn(outputs, batch.targets)["total_loss"].backward()
        return guard.step()

    assert step(None)
    before = _params(model)
    bad = OutputInjector.at_valid_position(batch, math.nan, key="count_prediction")
    assert step(bad) is False
    assert guard.steps_skipped == 1
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert step(None)  # training goes on afterwards


def test_violation_replays_to_the_same_failure():
    with pytest.raises(ContractViolation) as info:
        check_weights_stay_finite(
            _target(MultiplicativeCountMask), _count_nuc_batch(), optimizer="adam", garbage=math.inf
        )
    spec = info.value.replay
    assert spec is not None
    assert spec.kind == "loss"
    check = resolve_qualified_name(spec.check)
    assert check is check_weights_stay_finite
    with pytest.raises(ContractViolation) as again:
        check(_target(MultiplicativeCountMask), **from_plain(spec.args))
    assert str(again.value) == str(info.value)


@pytest.mark.parametrize(
    ("check", "kwargs", "match"),
    [
        (check_weights_stay_finite, {"optimizer": "rmsprop"}, "optimizer"),
        (check_weights_stay_finite, {"steps": 0}, "steps"),
        (check_weights_stay_finite, {"steps": 1.5}, "steps"),
        (check_nonfinite_batch_leaves_weights_unchanged, {"value": 1.0}, "non-finite"),
        (check_nonfinite_batch_leaves_weights_unchanged, {"warmup_steps": -1}, "warmup_steps"),
        (check_nonfinite_batch_leaves_weights_unchanged, {"key": "embeddings"}, "embeddings"),
    ],
    ids=["optimizer", "steps-0", "steps-float", "finite-value", "warmup", "absent-key"],
)
def test_weight_checks_reject_bad_arguments(check, kwargs, match):
    with pytest.raises(HarnessUsageError, match=match):
        check(BUILTIN, _count_nuc_batch(), **kwargs)


def test_weight_checks_reject_a_non_batch():
    with pytest.raises(HarnessUsageError, match="MultiTaskBatch"):
        check_weights_stay_finite(BUILTIN, {"outputs": {}})


def test_weights_module_exports_match_its_definitions():
    defined = {
        name
        for name, value in vars(_weights).items()
        if not name.startswith("_")
        and (getattr(value, "__module__", None) == _weights.__name__ or name.isupper())
    }
    assert set(_weights.__all__) == defined
