"""The packaged C-WEIGHTS-1 suite: training on garbage-padded batches keeps every weight finite,
and a batch with a non-finite valid output never changes the weights.

A tiny probe model (``robustness.probe``) produces every head of each generated batch; a plain
training loop (no step guard) runs a few steps of SGD with momentum or Adam. The checks live in
``robustness.properties._weights``; example budgets come from the Hypothesis profile.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from robustness.probe import valid_output_keys
from robustness.properties._weights import (
    OPTIMIZERS,
    check_nonfinite_batch_leaves_weights_unchanged,
    check_weights_stay_finite,
)
from robustness.strategies import MultiTaskBatch, multitask_batches

# A torch optimizer's first construction imports torch._dynamo (its add_param_group is wrapped
# to disable dynamo), and with it sympy: 1.1 s of CPU, once per process (torch 2.13). These
# tests and the two that differentiate twice (torch.autograd.grad with grad_outputs imports
# sympy; test_mutation_gaps.py) share one xdist worker (--dist loadgroup), so only that worker
# pays it; no other contract test imports either.
pytestmark = pytest.mark.xdist_group("torch-lazy-imports")

#: A few steps: enough for NaN to reach every parameter and for momentum/Adam state to matter.
STEPS = 3
GARBAGE = ("nan", "inf", "-inf", "max", "-max")
NONFINITE = (math.nan, math.inf, -math.inf)


def _garbage(name: str, dtype: torch.dtype) -> float:
    """Garbage by name; ``max`` is the largest finite value of the outputs' dtype."""
    if name.endswith("max"):
        top = torch.finfo(dtype).max
        return -top if name.startswith("-") else top
    return float(name)


def _remainder_batch(encoder_type: str, *, classifier: bool) -> MultiTaskBatch:
    """A remainder batch (B = 3) whose last sample has no ASV at all, every head present.

    unifrac carries ``embeddings`` (the base prediction is their pairwise distances: the
    diagonal is an exact duplicate, where a naive sqrt has an infinite derivative); faith_pd
    carries ``base_prediction [B, 1]``. Output values are placeholders: the probe replaces them.
    """
    b, a, length, v = 3, 2, 3, 4
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    lengths = torch.tensor([[3, 1], [2, 0], [0, 0]])
    nuc_mask = torch.arange(length) < lengths[..., None]
    ids = torch.tensor([[[0, 3, 1], [2, 0, 0]], [[1, 1, 0], [0, 0, 0]], [[0, 0, 0]] * 2])
    outputs: dict[str, torch.Tensor] = {
        "count_prediction": torch.zeros(b, a, 1),
        "nuc_predictions": torch.zeros(b, a, length, v),
    }
    targets = {
        "counts": torch.tensor([[[3.0], [1.0]], [[2.0], [0.0]], [[0.0], [0.0]]]),
        "mask": mask.to(torch.float32),
        "nucleotides": torch.where(nuc_mask, ids, -100),
        "nuc_mask": nuc_mask.to(torch.int64),
    }
    padded = {
        "count_prediction": ~mask[..., None],
        "nuc_predictions": (~nuc_mask)[..., None].expand(b, a, length, v).clone(),
    }
    kwargs: dict[str, object] = {"penalty": 1.0, "nuc_penalty": 1.0}
    if classifier:
        outputs["target_prediction"] = torch.log_softmax(torch.zeros(b, 3), dim=-1)
        targets["target"] = torch.tensor([0, 2, 2])
        kwargs["class_weights"] = torch.tensor([1.0, 0.0, 2.0])
    else:
        outputs["target_prediction"] = torch.zeros(b, 2)
        targets["target"] = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])
    padded["target_prediction"] = torch.zeros(outputs["target_prediction"].shape, dtype=torch.bool)
    if encoder_type == "unifrac":
        outputs["embeddings"] = torch.zeros(b, 2)
        padded["embeddings"] = torch.zeros(b, 2, dtype=torch.bool)
        targets["base_target"] = torch.tensor([[0.0, 0.5, 0.9], [0.5, 0.0, 0.4], [0.9, 0.4, 0.0]])
    else:
        outputs["base_prediction"] = torch.zeros(b, 1)
        padded["base_prediction"] = torch.zeros(b, 1, dtype=torch.bool)
        targets["base_target"] = torch.tensor([[2.0], [1.5], [0.0]])
    return MultiTaskBatch(
        outputs=outputs,
        targets=targets,
        padded=padded,
        is_classifier=classifier,
        encoder_type=encoder_type,
        loss_kwargs=kwargs,
    )


REMAINDER_EMBEDDINGS = _remainder_batch("unifrac", classifier=True)
REMAINDER_FAITH_PD = _remainder_batch("faith_pd", classifier=False)


@pytest.mark.rule("C-WEIGHTS-1", term="total_loss")
@pytest.mark.parametrize("optimizer", tuple(OPTIMIZERS))
@given(batch=multitask_batches(kind="ordinary"), garbage=st.sampled_from(GARBAGE))
@example(batch=REMAINDER_EMBEDDINGS, garbage="nan")
@example(batch=REMAINDER_EMBEDDINGS, garbage="max")
@example(batch=REMAINDER_FAITH_PD, garbage="inf")
def test_training_on_padding_garbage_keeps_weights_finite(
    loss_target, contract_device, optimizer, batch, garbage
):
    check_weights_stay_finite(
        loss_target,
        batch,
        optimizer=optimizer,
        steps=STEPS,
        garbage=_garbage(garbage, batch.dtype),
        device=contract_device,
    )


@pytest.mark.rule("C-WEIGHTS-1", term="total_loss")
@pytest.mark.parametrize("optimizer", tuple(OPTIMIZERS))
@given(
    batch=multitask_batches(kind="ordinary"),
    value=st.sampled_from(NONFINITE),
    output=st.integers(0, 4),
    position=st.integers(0, 10_000),
)
# NaN embeddings (the historical failure) and inf at a count of a remainder batch.
@example(batch=REMAINDER_EMBEDDINGS, value=math.nan, output=3, position=0)
@example(batch=REMAINDER_FAITH_PD, value=math.inf, output=0, position=1)
def test_nonfinite_valid_output_never_changes_weights(
    loss_target, contract_device, optimizer, batch, value, output, position
):
    keys = valid_output_keys(batch)  # every batch has one: target_prediction has no padding
    check_nonfinite_batch_leaves_weights_unchanged(
        loss_target,
        batch,
        optimizer=optimizer,
        value=value,
        key=keys[output % len(keys)],
        position=position,
        device=contract_device,
    )
