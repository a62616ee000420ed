"""A tiny multi-head probe model for C-WEIGHTS-1, and injectors of garbage into its outputs.

The probe stands in for AAM's transformer: a few hundred parameters, initialised
deterministically from a seed, that turn a :class:`~robustness.strategies.MultiTaskBatch`'s
target-side inputs (nucleotide ids, ASV and sequence masks) into every head the batch has:

=====================  ==================================================================
output key             shape
=====================  ==================================================================
``target_prediction``  ``[B, D]`` (regression) or ``[B, K]`` log-probabilities
``count_prediction``   ``[B, A, 1]``
``base_prediction``    ``[B, B]`` squared distances (unifrac) or ``[B, 1]`` (faith_pd)
``embeddings``         ``[B, E]`` (unifrac; the loss turns them into pairwise distances)
``nuc_predictions``    ``[B, A, L, V]`` logits
=====================  ==================================================================

The model itself is robust: padded ids (``-100``, ``V``) and padded positions are replaced by
selection before anything is computed, and every hidden activation is bounded (``tanh``), so
its own outputs and Jacobians are finite. Whatever non-finite value reaches a parameter came
through the loss.

:class:`OutputInjector` overwrites chosen positions of the outputs with a value (NaN, ±inf,
``finfo.max``) *straight-through*: the value is the garbage, the gradient is passed on to the
model's own output at that position, as it would be in a real model whose padded outputs are
computed from its parameters. A loss that masks by selection sends exactly 0 back through a
padded position, so the parameters stay finite; a loss that masks by multiplication sends
``nan * 0 = nan`` back, and the parameters turn NaN. Use :meth:`OutputInjector.at_padding` for
garbage at padded positions and :meth:`OutputInjector.at_valid_position` for one non-finite
value at a valid position (the refused-step half of the rule).

Example:
    >>> import math
    >>> model = ProbeModel(output_keys=("count_prediction",), output_dtype=torch.float32)
    >>> tokens = torch.zeros(2, 3, 1, dtype=torch.long)
    >>> asv_mask = torch.tensor([[True, True, False], [True, False, False]])
    >>> injector = OutputInjector({"count_prediction": ~asv_mask.unsqueeze(-1)}, math.nan)
    >>> handle = injector.attach(model)
    >>> out = model(tokens, asv_mask.unsqueeze(-1), asv_mask)["count_prediction"]
    >>> out.isnan().squeeze(-1).tolist()
    [[False, False, True], [False, True, True]]
    >>> handle.remove()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from robustness.errors import HarnessUsageError
from robustness.strategies import OUTPUT_KEYS, MultiTaskBatch

__all__ = [
    "PROBE_OUTPUT_KEYS",
    "OutputInjector",
    "ProbeInputs",
    "ProbeModel",
    "inject",
    "probe_inputs",
    "valid_output_keys",
]

#: Every output key the probe can produce, in the order of the heads.
PROBE_OUTPUT_KEYS = tuple(key for keys in OUTPUT_KEYS.values() for key in keys)
_ENCODER_TYPES = ("unifrac", "faith_pd")
#: Fixed frequencies of the per-sample index features: they make samples (and so the rows of
#: ``embeddings`` and the pairwise distances) differ even when their inputs are identical.
_SAMPLE_FREQUENCIES = (1.0, 0.37)
#: Every output is ``bound * tanh(x / bound)``: linear near 0, but bounded, so a few steps
#: of any optimizer on any loss with moderate targets can neither overflow an output (float16
#: included) nor grow a parameter faster than linearly. A non-finite weight is the loss's doing.
_OUTPUT_BOUND = 32.0
_DISTANCE_BOUND = 4.0
#: Width of the projection whose squared distances are the unifrac ``base_prediction``.
_DISTANCE_DIM = 3


class ProbeInputs(NamedTuple):
    """What the probe reads from a batch (all on the batch's device).

    Attributes:
        tokens: ``[B, A, L]`` int64 nucleotide ids; any value at padded positions.
        token_mask: ``[B, A, L]`` bool, True at valid sequence positions.
        asv_mask: ``[B, A]`` bool, True at valid ASVs.
    """

    tokens: Tensor
    token_mask: Tensor
    asv_mask: Tensor


def probe_inputs(batch: MultiTaskBatch) -> ProbeInputs:
    """The probe's inputs for ``batch``: its nucleotide ids and masks, on its device.

    Without a nucleotide head every ASV is one token (id 0); without count and nucleotide
    heads every sample is one valid ASV of one token, so the samples differ only through the
    probe's per-sample index features.
    """
    targets, device = batch.targets, batch.device
    b = batch.batch_size
    if "nucleotides" in targets:
        tokens = targets["nucleotides"].long()
        token_mask = targets["nuc_mask"] != 0
        asv_mask = targets["mask"] != 0 if "mask" in targets else token_mask.any(-1)
        return ProbeInputs(tokens, token_mask, asv_mask)
    if "mask" in targets:
        asv_mask = targets["mask"] != 0
        tokens = torch.zeros((*asv_mask.shape, 1), dtype=torch.long, device=device)
        return ProbeInputs(tokens, asv_mask.unsqueeze(-1), asv_mask)
    ones = torch.ones((b, 1), dtype=torch.bool, device=device)
    return ProbeInputs(
        torch.zeros((b, 1, 1), dtype=torch.long, device=device), ones[..., None], ones
    )


class _Dense(nn.Module):
    """``x @ weight.T + bias``, initialised from an explicit generator (no global RNG use)."""

    def __init__(self, n_in: int, n_out: int, generator: torch.Generator, dtype: torch.dtype):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        weight = (
            torch.rand((n_out, n_in), generator=generator, dtype=torch.float64) * 2 - 1
        ) * bound
        bias = (torch.rand((n_out,), generator=generator, dtype=torch.float64) * 2 - 1) * bound
        self.weight = nn.Parameter(weight.to(dtype))
        self.bias = nn.Parameter(bias.to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias


class ProbeModel(nn.Module):
    """A tiny deterministic multi-head model that produces exactly a batch's output heads.

    Parameters are float32 (float64 when the outputs are float64), like the master weights of
    mixed-precision training; the outputs are cast to ``output_dtype`` at the end, so half
    precision batches get half precision outputs without half precision optimizer state.

    Args:
        output_keys: which outputs to produce, from :data:`PROBE_OUTPUT_KEYS`.
        vocab: ``V``, the number of nucleotide ids (logits per position).
        target_dim: ``D`` (regression) or ``K`` (classification) of ``target_prediction``.
        is_classifier: produce log-probabilities (``log_softmax``) for the target head.
        encoder_type: ``"unifrac"`` (``base_prediction`` ``[B, B]``) or ``"faith_pd"``
            (``[B, 1]``).
        embedding_dim: ``E`` of ``embeddings``.
        output_dtype: floating dtype of every output.
        hidden: width of the hidden representations.
        seed: seed of the initialisation; equal seeds give bit-identical parameters.

    Raises:
        HarnessUsageError: on an unknown output key, a size < 1, an unknown encoder type or a
            non-floating ``output_dtype``.
    """

    def __init__(
        self,
        *,
        output_keys: Sequence[str],
        vocab: int = 1,
        target_dim: int = 1,
        is_classifier: bool = False,
        encoder_type: str = "unifrac",
        embedding_dim: int = 1,
        output_dtype: torch.dtype = torch.float32,
        hidden: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        keys = tuple(output_keys)
        unknown = [k for k in keys if k not in PROBE_OUTPUT_KEYS]
        if unknown or not keys:
            raise HarnessUsageError(
                f"ProbeModel: output_keys must be a non-empty subset of {PROBE_OUTPUT_KEYS}, "
                f"got {keys!r}"
            )
        for name, value in (
            ("vocab", vocab),
            ("target_dim", target_dim),
            ("embedding_dim", embedding_dim),
            ("hidden", hidden),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise HarnessUsageError(f"ProbeModel: {name} must be an int >= 1, got {value!r}")
        if encoder_type not in _ENCODER_TYPES:
            raise HarnessUsageError(
                f"ProbeModel: encoder_type must be one of {', '.join(_ENCODER_TYPES)}, got "
                f"{encoder_type!r}"
            )
        if not isinstance(output_dtype, torch.dtype) or not output_dtype.is_floating_point:
            raise HarnessUsageError(
                f"ProbeModel: output_dtype must be a floating torch dtype, got {output_dtype!r}"
            )
        self.output_keys = keys
        self.vocab = vocab
        self.is_classifier = is_classifier
        self.encoder_type = encoder_type
        self.output_dtype = output_dtype
        self.seed = seed
        param_dtype = torch.float64 if output_dtype == torch.float64 else torch.float32
        generator = torch.Generator().manual_seed(seed)

        def dense(n_in: int, n_out: int) -> _Dense:
            return _Dense(n_in, n_out, generator, param_dtype)

        # Created in a fixed order from one generator: the seed alone fixes every parameter.
        self.token_embedding = nn.Parameter(
            torch.randn((vocab, hidden), generator=generator, dtype=torch.float64).to(param_dtype)
        )
        self.asv_layer = dense(hidden, hidden)
        self.sample_layer = dense(hidden + 2 * len(_SAMPLE_FREQUENCIES), hidden)
        self.heads = nn.ModuleDict()
        sizes = {
            "target_prediction": target_dim,
            "count_prediction": 1,
            "base_prediction": _DISTANCE_DIM if encoder_type == "unifrac" else 1,
            "embeddings": embedding_dim,
            "nuc_predictions": vocab,
        }
        for key in PROBE_OUTPUT_KEYS:
            if key in keys:
                self.heads[key] = dense(hidden, sizes[key])

    @classmethod
    def for_batch(cls, batch: MultiTaskBatch, *, hidden: int = 8, seed: int = 0) -> ProbeModel:
        """A probe producing exactly ``batch.outputs``' keys, shapes and dtype (on the cpu)."""
        sizes = batch.sizes()
        target = batch.outputs.get("target_prediction")
        embeddings = batch.outputs.get("embeddings")
        return cls(
            output_keys=tuple(batch.outputs),
            vocab=sizes.get("V", 1),
            target_dim=int(target.shape[1]) if target is not None else 1,
            is_classifier=batch.is_classifier,
            encoder_type=batch.encoder_type,
            embedding_dim=int(embeddings.shape[1]) if embeddings is not None else 1,
            output_dtype=batch.dtype,
            hidden=hidden,
            seed=seed,
        )

    def forward(self, tokens: Tensor, token_mask: Tensor, asv_mask: Tensor) -> dict[str, Tensor]:
        """All requested heads from nucleotide ids and masks (see :class:`ProbeInputs`).

        Args:
            tokens: ``[B, A, L]`` integer ids; anything (``-100``, ``V``) at padded positions.
            token_mask: ``[B, A, L]``, valid where ``!= 0``.
            asv_mask: ``[B, A]``, valid where ``!= 0``.

        Returns:
            output key -> tensor of ``output_dtype`` (shapes in the module docstring).

        Raises:
            HarnessUsageError: if the shapes of the inputs do not fit together.
        """
        if (
            tokens.ndim != 3
            or token_mask.shape != tokens.shape
            or asv_mask.shape != tokens.shape[:2]
        ):
            raise HarnessUsageError(
                f"ProbeModel: expected tokens and token_mask [B, A, L] and asv_mask [B, A], got "
                f"{tuple(tokens.shape)}, {tuple(token_mask.shape)}, {tuple(asv_mask.shape)}"
            )
        weight = self.token_embedding
        valid_tok = (token_mask != 0) & (asv_mask != 0).unsqueeze(-1)
        valid_asv = asv_mask != 0
        # Selection before lookup: padded ids may be -100 or V, which no table row holds.
        ids = torch.where(valid_tok, tokens.long(), 0).clamp(0, self.vocab - 1)
        tok = torch.tanh(weight[ids])  # [B, A, L, H]
        asv = _masked_mean(tok, valid_tok, dim=2)  # [B, A, H]
        asv = torch.tanh(self.asv_layer(asv))
        pooled = _masked_mean(asv, valid_asv, dim=1)  # [B, H]
        index = torch.arange(tokens.shape[0], device=tokens.device, dtype=weight.dtype)
        freqs = torch.tensor(_SAMPLE_FREQUENCIES, device=tokens.device, dtype=weight.dtype)
        angles = index[:, None] * freqs
        sample = torch.cat([pooled, torch.sin(angles), torch.cos(angles)], dim=-1)
        sample = torch.tanh(self.sample_layer(sample))  # [B, H]

        out: dict[str, Tensor] = {}
        for key, head in self.heads.items():
            if key == "nuc_predictions":
                value = _bounded(head(tok), _OUTPUT_BOUND)
            elif key == "count_prediction":
                value = _bounded(head(asv), _OUTPUT_BOUND)
            elif key == "target_prediction":
                value = _bounded(head(sample), _OUTPUT_BOUND)
                if self.is_classifier:
                    value = torch.log_softmax(value, dim=-1)
            elif key == "base_prediction" and self.encoder_type == "unifrac":
                z = _bounded(head(sample), _DISTANCE_BOUND)
                # Squared distances: smooth everywhere (no sqrt at 0), zero on the diagonal.
                value = (z[:, None, :] - z[None, :, :]).square().sum(-1)
            else:
                value = _bounded(head(sample), _OUTPUT_BOUND)
            out[key] = value.to(self.output_dtype)
        return out

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        """Heads, options and size, for ``print(model)``."""
        return (
            f"output_keys={self.output_keys}, is_classifier={self.is_classifier}, "
            f"encoder_type={self.encoder_type!r}, output_dtype={self.output_dtype}, "
            f"seed={self.seed}, parameters={self.num_parameters()}"
        )


def _bounded(x: Tensor, bound: float) -> Tensor:
    """``bound * tanh(x / bound)``: the identity near 0, never beyond ``±bound``."""
    return bound * torch.tanh(x / bound)


def _masked_mean(x: Tensor, valid: Tensor, *, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` at valid positions (0 where none is valid); by selection."""
    keep = valid.unsqueeze(-1)
    total = torch.where(keep, x, 0.0).sum(dim)
    count = keep.sum(dim).clamp_min(1).to(x.dtype)
    return total / count


def inject(
    outputs: Mapping[str, Tensor], positions: Mapping[str, Tensor], value: float
) -> dict[str, Tensor]:
    """Copy of ``outputs`` with ``value`` at ``positions``, straight-through for gradients.

    At a chosen position the result's value is ``value`` (cast to the output's dtype) and its
    gradient flows to the output's own value there; elsewhere the output is unchanged (same
    values, same graph). Outputs without positions are passed on as they are.

    Args:
        outputs: output key -> tensor.
        positions: output key -> bool tensor of that output's shape, True where to inject.
        value: the value to write (``nan``, ``inf``, ``-inf``, ``finfo.max``, ...).

    Raises:
        HarnessUsageError: if a position tensor's shape does not match its output.
    """
    result: dict[str, Tensor] = {}
    for key, out in outputs.items():
        where = positions.get(key)
        if where is None:
            result[key] = out
            continue
        if where.shape != out.shape:
            raise HarnessUsageError(
                f"inject: positions for {key} have shape {tuple(where.shape)}, but the output "
                f"is {tuple(out.shape)}"
            )
        garbage = torch.full((), value, dtype=out.dtype, device=out.device)
        # out - out.detach() is exactly 0 but carries d/d(out) = 1: the injected value keeps the
        # model's gradient path, so whatever the loss sends back there reaches the parameters.
        through = garbage + (out - out.detach())
        result[key] = torch.where(where.to(out.device, torch.bool), through, out)
    return result


class OutputInjector:
    """Writes ``value`` at fixed positions of a model's output dict (see :func:`inject`).

    Use as a forward hook (:meth:`attach`) or call it on an output dict directly.

    Args:
        positions: output key -> bool tensor of that output's shape, True where to inject.
        value: the value to write.
    """

    def __init__(self, positions: Mapping[str, Tensor], value: float) -> None:
        self.positions = {k: v.to(torch.bool) for k, v in positions.items()}
        self.value = float(value)

    @classmethod
    def at_padding(cls, batch: MultiTaskBatch, value: float) -> OutputInjector:
        """Garbage at every padded position of every output of ``batch``."""
        return cls(batch.padded, value)

    @classmethod
    def at_valid_position(
        cls, batch: MultiTaskBatch, value: float, *, key: str | None = None, position: int = 0
    ) -> OutputInjector:
        """``value`` at one valid position of one output of ``batch``.

        Args:
            batch: the batch whose ``padded`` says which positions are valid.
            value: the (non-finite) value to write.
            key: the output; ``None`` picks the first output (in head order) that has a valid
                position.
            position: which valid position, counted in row-major order, modulo their number.

        Raises:
            HarnessUsageError: if ``key`` is not an output of the batch, or it (or, with
                ``key=None``, every output) has no valid position.
        """
        keys = [key] if key is not None else valid_output_keys(batch)
        if key is not None and key not in batch.outputs:
            raise HarnessUsageError(
                f"at_valid_position: {key!r} is not an output of this batch "
                f"(outputs: {', '.join(batch.outputs)})"
            )
        if not keys or not bool((~batch.padded[keys[0]]).any()):
            raise HarnessUsageError(
                f"at_valid_position: {'output ' + repr(key) if key else 'the batch'} has no "
                "valid position; draw a batch with at least one valid output entry"
            )
        chosen = keys[0]
        valid = ~batch.padded[chosen]
        flat = torch.nonzero(valid.reshape(-1)).squeeze(-1)
        one_hot = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
        one_hot[flat[position % flat.numel()]] = True
        return cls({chosen: one_hot.reshape(valid.shape)}, value)

    def __call__(self, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``outputs`` with the value injected (see :func:`inject`)."""
        return inject(outputs, self.positions, self.value)

    def hook(
        self, module: nn.Module, args: Any, outputs: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Forward-hook signature: replaces the module's output dict."""
        return self(outputs)

    def attach(self, model: nn.Module) -> RemovableHandle:
        """Register as a forward hook on ``model``; ``handle.remove()`` detaches it."""
        return model.register_forward_hook(self.hook)

    def describe(self) -> str:
        """E.g. ``"nan at 7 positions (count_prediction: 3, nuc_predictions: 4)"``."""
        counts = {k: int(v.sum()) for k, v in self.positions.items() if bool(v.any())}
        where = ", ".join(f"{k}: {n}" for k, n in counts.items())
        return f"{self.value} at {sum(counts.values())} positions ({where or 'none'})"

    def first_positions(self) -> dict[str, tuple[int, ...]]:
        """Output key -> first injected index, for messages."""
        return {
            k: tuple(int(i) for i in torch.nonzero(v)[0].tolist())
            for k, v in self.positions.items()
            if bool(v.any())
        }


def valid_output_keys(batch: MultiTaskBatch) -> list[str]:
    """Output keys of ``batch`` with at least one valid (non-padded) position, in head order."""
    return [k for k in batch.outputs if bool((~batch.padded[k]).any())]
