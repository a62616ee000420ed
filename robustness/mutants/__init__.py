"""The mutant corpus: deliberately broken variants of the ``aam`` losses and metrics.

Each mutant is one realistic bug (the classes in the contract's background and those found
while building the harness), lives in its own module of this package, and declares the rule
that must catch it. ``python -m robustness selftest`` runs the gate on every mutant and on
``aam``; it fails if any mutant survives. A loss mutant's module defines ``MultiTaskLoss`` and
``compute_pairwise_distances``; a metrics mutant's module defines the six metric names.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustness.target import DEFAULT_LOSS_TARGET, DEFAULT_METRICS_TARGET

__all__ = ["CORPUS", "Mutant", "by_name"]


@dataclass(frozen=True)
class Mutant:
    """One deliberately broken implementation.

    Attributes:
        name: short identifier (the module name).
        rule: the contract rule id that must catch it.
        bug: one sentence describing the bug, as a reviewer would.
        kind: ``"loss"`` or ``"metrics"``: which target it replaces.
    """

    name: str
    rule: str
    bug: str
    kind: str

    @property
    def target(self) -> str:
        """The loss target the gate runs against."""
        if self.kind == "loss":
            return f"robustness.mutants.{self.name}:MultiTaskLoss"
        return DEFAULT_LOSS_TARGET

    @property
    def metrics(self) -> str:
        """The metrics target the gate runs against."""
        if self.kind == "metrics":
            return f"robustness.mutants.{self.name}"
        return DEFAULT_METRICS_TARGET


CORPUS: tuple[Mutant, ...] = (
    # ---- losses
    Mutant(
        "count_keepdim",
        "C-SCALAR-1",
        "count_loss sums per sample and then over the batch with keepdim=True, so it returns "
        "shape [1] instead of a 0-dim tensor.",
        "loss",
    ),
    Mutant(
        "count_sum_overflow",
        "C-FINITE-1",
        "count_loss sums the squared errors before dividing by the count, so a mean of squares "
        "that float32 can represent overflows to inf in the intermediate sum.",
        "loss",
    ),
    Mutant(
        "count_mask_multiply",
        "C-MASK-1",
        "count_loss masks by multiplying the squared error with the mask, so NaN/inf garbage at "
        "padded ASVs gives NaN * 0 = NaN.",
        "loss",
    ),
    Mutant(
        "count_select_after_square",
        "C-MASK-2",
        "count_loss applies torch.where after squaring, so the value is clean but backward sends "
        "0 * 2(NaN - t) = NaN into the padded positions' gradient.",
        "loss",
    ),
    Mutant(
        "nuc_ignore_index",
        "C-MASK-2",
        "nuc_loss relies on cross_entropy(ignore_index=-100) instead of selecting valid "
        "positions first, so NaN logits at padding still pass through log_softmax's backward.",
        "loss",
    ),
    Mutant(
        "count_mean_over_rectangle",
        "C-PAD-1",
        "count_loss zeroes padded errors and takes .mean() over the whole padded [B, A] "
        "rectangle, so the loss shrinks as padding grows.",
        "loss",
    ),
    Mutant(
        "count_zero_over_zero",
        "C-EMPTY-1",
        "count_loss divides the masked sum by the number of valid ASVs without a guard, "
        "0/0 = NaN for an all-padding batch.",
        "loss",
    ),
    Mutant(
        "count_detached_empty",
        "C-EMPTY-1",
        "count_loss returns a fresh torch.tensor(0.0) when no ASV is valid, cut from the graph, "
        "so total_loss.backward() never reaches count_prediction.",
        "loss",
    ),
    Mutant(
        "base_pair_count",
        "C-RAGGED-1",
        "unifrac base_loss divides the off-diagonal squared error by B * (B - 1), which is "
        "0/0 = NaN for a remainder batch of one sample.",
        "loss",
    ),
    Mutant(
        "base_slicing",
        "C-SHAPE-1",
        "base_loss slices base_pred[:, :base_true.shape[1]] to fit remainder batches, silently "
        "hiding a [B, N] prediction that does not match the [B, B] target.",
        "loss",
    ),
    Mutant(
        "target_broadcasting",
        "C-SHAPE-1",
        "regression target_loss is ((pred - true) ** 2).mean() with no shape check, so a "
        "[B, 1] prediction against a [B] target broadcasts to [B, B].",
        "loss",
    ),
    Mutant(
        "nuc_clamped_ids",
        "C-INPUT-1",
        "nuc_loss clamps nucleotide ids into [0, V) instead of rejecting out-of-range ids at "
        "valid positions, training on the wrong labels.",
        "loss",
    ),
    Mutant(
        "penalty_nan_accepted",
        "C-INPUT-1",
        "penalties are validated with `if value < 0: raise`, which NaN and inf pass, so "
        "nuc_penalty=nan silently poisons every total.",
        "loss",
    ),
    Mutant(
        "count_nan_to_num",
        "C-NONFINITE-1",
        "count_loss runs torch.nan_to_num on the prediction, so NaN/inf model outputs give a "
        "silently wrong finite loss instead of an error.",
        "loss",
    ),
    Mutant(
        "class_weight_zero_over_zero",
        "C-WEIGHT-1",
        "class-weighted NLL is sum(w[y] * nll) / sum(w[y]) with no guard, 0/0 = NaN when every "
        "class in the batch has weight 0.",
        "loss",
    ),
    Mutant(
        "total_zero_times_inf",
        "C-REF-1",
        "total_loss is the sum of penalty * term over every term, so a zero penalty times a term "
        "that overflowed to inf makes the total NaN instead of dropping the term.",
        "loss",
    ),
    Mutant(
        "pairwise_unguarded_sqrt",
        "C-DIST-1",
        "compute_pairwise_distances takes an unguarded sqrt of the summed squared differences, "
        "whose infinite derivative at 0 gives NaN gradients for duplicate rows.",
        "loss",
    ),
    Mutant(
        "pairwise_gram",
        "C-DIST-1",
        "compute_pairwise_distances uses |a|² + |b|² - 2a·b clamped at 1e-12, which cancels for "
        "near-duplicate rows and reports the clamp floor instead of their distance.",
        "loss",
    ),
    Mutant(
        "count_half_squares",
        "C-DTYPE-1",
        "count_loss squares the differences in the input dtype and casts to float32 only at the "
        "end, so float16 differences above 256 overflow to inf.",
        "loss",
    ),
    Mutant(
        "target_signed_error",
        "C-INVARIANT-1",
        "the MSE target_loss is written as (pred - true).mean(), the square forgotten, so it "
        "goes negative.",
        "loss",
    ),
    Mutant(
        "total_unweighted",
        "C-INVARIANT-1",
        "total_loss adds the four terms and forgets to multiply them by their penalties.",
        "loss",
    ),
    Mutant(
        "nuc_inplace_ids",
        "C-PURE-1",
        "nuc_loss sanitises padded ids in place (nuc_true[mask == 0] = 0), overwriting the "
        "caller's targets.",
        "loss",
    ),
    Mutant(
        "count_detached_prediction",
        "C-PURE-1",
        "count_loss reads count_pred.detach() (copied from logging code), so the count head "
        "gets no gradient.",
        "loss",
    ),
    Mutant(
        "count_backward_no_mean",
        "C-GRAD-1",
        "count_loss is a fused torch.autograd.Function whose value is right but whose "
        "hand-written backward returns 2 (p - t) without the mean's 1 / n.",
        "loss",
    ),
    Mutant(
        "target_backward_no_two",
        "C-GRAD-1",
        "the regression MSE target_loss is a fused torch.autograd.Function whose value is right "
        "but whose hand-written backward returns (p - t) / n, the factor 2 forgotten.",
        "loss",
    ),
    # ---- metrics
    Mutant(
        "regression_half_sums",
        "C-METRIC-REF-1",
        "regression metrics square the errors in the input dtype before the float64 cast, so "
        "float16 squares above 65504 overflow to inf.",
        "metrics",
    ),
    Mutant(
        "confusion_transposed",
        "C-METRIC-REF-1",
        "the confusion matrix is filled with bincount(pred * K + true), rows predicted instead "
        "of true, so precision and recall are swapped.",
        "metrics",
    ),
    Mutant(
        "count_metrics_mask_multiply",
        "C-METRIC-REF-1",
        "count metrics mask by multiplying the difference with the mask, so NaN/inf at padded "
        "ASVs turns MAE and MSE into NaN.",
        "metrics",
    ),
    Mutant(
        "class_ids_wrap_around",
        "C-METRIC-INPUT-1",
        "classification metrics never validate class ids and fill the confusion matrix with "
        "index_put_, so -1 silently wraps around to the last class.",
        "metrics",
    ),
    Mutant(
        "class_target_ids_clamped",
        "C-METRIC-INPUT-1",
        "classification metrics clamp target ids into [0, num_classes) instead of rejecting "
        "them, so a label of K is silently counted as class K - 1.",
        "metrics",
    ),
    Mutant(
        "regression_truncates",
        "C-METRIC-INPUT-1",
        "regression metrics cut predictions and targets to the shorter length instead of "
        "raising on different lengths.",
        "metrics",
    ),
    Mutant(
        "r2_constant_targets",
        "C-METRIC-EDGE-1",
        "R² is 1 - SSE / SST with no case for constant targets, so it is NaN or -inf where the "
        "contract says 1.0 or 0.0.",
        "metrics",
    ),
    Mutant(
        "update_empty_batch",
        "C-STREAM-1",
        "streaming regression update has no early return for an empty batch, so an empty "
        "remainder batch raises in amin() instead of being a no-op.",
        "metrics",
    ),
    Mutant(
        "merge_mean_of_means",
        "C-STREAM-2",
        "merge averages the two states' target means with equal weight instead of weighting "
        "them by their counts.",
        "metrics",
    ),
    Mutant(
        "merge_drains_other",
        "C-STREAM-2",
        "count merge moves the other state's sums and resets it instead of copying them, so a "
        "state merged into two others is lost.",
        "metrics",
    ),
    Mutant(
        "r2_naive_variance",
        "C-STREAM-3",
        "streaming R² keeps sum(y) and sum(y²) and computes the variance as "
        "sum(y²) - n·mean², which cancels catastrophically for targets around 1e8.",
        "metrics",
    ),
    Mutant(
        "update_python_loop",
        "C-STREAM-4",
        "streaming regression update folds one element at a time in a Python loop, so it "
        "runs interpreter code per element.",
        "metrics",
    ),
    Mutant(
        "class_keeps_batches",
        "C-STREAM-4",
        "streaming classification metrics without num_classes keep every batch to infer the "
        "number of classes, so the state grows with the data.",
        "metrics",
    ),
    Mutant(
        "count_keeps_batches",
        "C-STREAM-4",
        "streaming count metrics keep every batch in a list and reduce them in compute(), so "
        "the state grows with the data.",
        "metrics",
    ),
)


def by_name(name: str) -> Mutant:
    """Look up a mutant by name.

    Raises:
        KeyError: naming the known mutants, if there is none called ``name``.
    """
    for mutant in CORPUS:
        if mutant.name == name:
            return mutant
    raise KeyError(f"no mutant {name!r}; known: {', '.join(m.name for m in CORPUS)}")
