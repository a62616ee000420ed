"""Multi-task loss batches: :class:`MultiTaskBatch`, :func:`multitask_batches`, :func:`embeddings`.

A batch is drawn in two stages so that failing examples shrink to small readable ones:

1. *sizes and structure*: dtype, which heads, batch size ``B``, rectangle sizes ``A`` (ASVs),
   ``L`` (sequence length), ``V`` (vocabulary), ``K`` (classes), ``D`` (target/embedding
   features), per-sample ASV counts ``0..A``, per-ASV lengths ``0..L`` and the mask layout,
   classifier / encoder / loss options;
2. *values*: predictions and truths of the requested kind at valid positions.

Conventions of the drawn tensors (cpu; move them with :meth:`MultiTaskBatch.to`):

=====================  ==================  ====================================================
key                    shape               padded (``MultiTaskBatch.padded``)
=====================  ==================  ====================================================
``target_prediction``  ``[B, D]`` values,  nothing
                       ``[B, K]`` log-probs
``count_prediction``   ``[B, A, 1]``       ``mask == 0``
``base_prediction``    ``[B, B]`` unifrac  the diagonal (unifrac); nothing (faith_pd)
                       ``[B, 1]`` faith_pd
``nuc_predictions``    ``[B, A, L, V]``    ``nuc_mask == 0`` (over all ``V``)
``embeddings``         ``[B, E]``          nothing (replaces ``base_prediction`` for unifrac)
=====================  ==================  ====================================================

Targets: ``target`` (``[B, D]`` floats or ``[B]`` int64 class ids), ``counts`` ``[B, A, 1]``,
``mask`` ``[B, A]``, ``base_target`` (symmetric, zero diagonal for unifrac), ``nucleotides``
``[B, A, L]`` int64 (ids in ``[0, V)`` at valid positions; ``-100`` or ``V`` at padding, which
a loss must ignore), ``nuc_mask`` ``[B, A, L]``. A sequence position is valid only inside a
valid ASV.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustness.errors import HarnessUsageError
from robustness.strategies._tensors import (
    FLOAT_DTYPES,
    MASK_DTYPES,
    _check_bool,
    _check_float_dtype,
    _check_kind,
    _check_mask_dtype,
    array_tensors,
    as_mask,
    dtype_name,
    strided_copy,
)

__all__ = [
    "ENCODER_TYPES",
    "OUTPUT_KEYS",
    "TARGET_LOSS_TYPES",
    "TERMS",
    "MultiTaskBatch",
    "embeddings",
    "multitask_batches",
    "term_name",
]

#: Heads ``multitask_batches(terms=...)`` knows, and the loss term each feeds.
TERMS = ("target", "count", "base", "nuc")
_TERM_NAMES = {
    "target": "target_loss",
    "count": "count_loss",
    "base": "base_loss",
    "nuc": "nuc_loss",
}
#: Output keys of each head (``embeddings`` stands in for ``base_prediction`` with unifrac).
OUTPUT_KEYS = {
    "target": ("target_prediction",),
    "count": ("count_prediction",),
    "base": ("base_prediction", "embeddings"),
    "nuc": ("nuc_predictions",),
}
ENCODER_TYPES = ("unifrac", "faith_pd")
TARGET_LOSS_TYPES = ("mse", "mae", "huber")
_PENALTY_NAMES = ("target_penalty", "count_penalty", "penalty", "nuc_penalty")
#: Nucleotide ids at padded positions: the usual ignore index and the first invalid id.
_PAD_ID = -100

# Aliases accepted by term_inputs / term_name, e.g. "count", "count_loss".
_ALIASES = {
    **{t: t for t in TERMS},
    **{name: t for t, name in _TERM_NAMES.items()},
    "nucleotide": "nuc",
    "nucleotide_loss": "nuc",
}


def term_name(term: str) -> str:
    """Canonical head name (``"target"``, ``"count"``, ``"base"``, ``"nuc"``) of a term.

    Accepts the head names and the loss names (``"count_loss"``, ``"nucleotide"``, ...).

    Raises:
        HarnessUsageError: on an unknown term.
    """
    if term not in _ALIASES:
        raise HarnessUsageError(
            f"unknown term {term!r}; use one of {', '.join(TERMS)} (or "
            f"{', '.join(_TERM_NAMES.values())})"
        )
    return _ALIASES[term]


# --------------------------------------------------------------------------- the batch


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise HarnessUsageError(f"not a torch dtype name: {name!r}")
    return dtype


def _leaf(t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """A detached copy-free handle of ``t`` that is a leaf (requiring grad if asked)."""
    out = t.detach()
    return out.requires_grad_(requires_grad) if out.is_floating_point() else out


def _same_layout_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached copy with ``t``'s values, non-contiguous again if ``t`` was."""
    copy = t.detach().clone()
    return copy if t.is_contiguous() else strided_copy(copy)


@dataclass(eq=False, repr=False)
class MultiTaskBatch:
    """One drawn input of ``MultiTaskLoss``: outputs, targets, padding and loss options.

    Attributes:
        outputs: output key -> prediction (only the drawn heads), as ``forward`` takes them.
        targets: ``target``, ``counts``, ``mask``, ``base_target``, ``nucleotides``,
            ``nuc_mask`` as the heads need.
        padded: output key -> bool tensor of that output's shape, True at padded positions
            (the unifrac diagonal included; all False for ``target_prediction``,
            faith_pd's ``base_prediction`` and ``embeddings``).
        is_classifier: ``forward``'s ``is_classifier``.
        encoder_type: ``forward``'s ``encoder_type`` (``"unifrac"`` or ``"faith_pd"``).
        loss_kwargs: ``MultiTaskLoss`` constructor kwargs (penalties, ``target_loss_type``,
            ``class_weights`` when drawn).
        kind: the kind of values at valid positions of the outputs.
    """

    outputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    padded: dict[str, torch.Tensor]
    is_classifier: bool = False
    encoder_type: str = "unifrac"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = "ordinary"

    # ------------------------------------------------------------------ structure

    @property
    def terms(self) -> tuple[str, ...]:
        """Heads present, as canonical names (``"target"``, ``"count"``, ...)."""
        return tuple(t for t in TERMS if any(k in self.outputs for k in OUTPUT_KEYS[t]))

    @property
    def uses_embeddings(self) -> bool:
        """Whether the base prediction is the pairwise distances of ``outputs["embeddings"]``."""
        return self.encoder_type == "unifrac" and "embeddings" in self.outputs

    def output_key(self, term: str) -> str:
        """The output key feeding ``term`` in this batch (``embeddings`` for base if used).

        Raises:
            HarnessUsageError: on an unknown term or one this batch does not have.
        """
        head = term_name(term)
        for key in OUTPUT_KEYS[head]:
            if key in self.outputs:
                return key
        raise HarnessUsageError(
            f"this batch has no {head!r} head (heads: {', '.join(self.terms) or 'none'}); "
            f"draw it with multitask_batches(terms=(..., {head!r}))"
        )

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the outputs."""
        return next(iter(self.outputs.values())).dtype

    @property
    def device(self) -> torch.device:
        """Device of the outputs."""
        return next(iter(self.outputs.values())).device

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(next(iter(self.outputs.values())).shape[0])

    def sizes(self) -> dict[str, int]:
        """``B`` and whichever of ``A``, ``L``, ``V``, ``K``, ``D``, ``E`` the heads define."""
        out = {"B": self.batch_size}
        if "count_prediction" in self.outputs:
            out["A"] = int(self.outputs["count_prediction"].shape[1])
        if "nuc_predictions" in self.outputs:
            _, a, length, vocab = self.outputs["nuc_predictions"].shape
            out.update(A=int(a), L=int(length), V=int(vocab))
        if "target_prediction" in self.outputs:
            out["K" if self.is_classifier else "D"] = int(
                self.outputs["target_prediction"].shape[1]
            )
        if "embeddings" in self.outputs:
            out["E"] = int(self.outputs["embeddings"].shape[1])
        return out

    def valid(self, key: str) -> torch.Tensor:
        """Bool tensor of ``outputs[key]``'s shape, True at valid positions (``~padded``)."""
        return ~self.padded[key]

    # ------------------------------------------------------------------ copies

    def _replace(self, **changes: Any) -> MultiTaskBatch:
        return dataclasses.replace(self, **changes)

    def to(self, device: str | torch.device) -> MultiTaskBatch:
        """Copy with every tensor (class weights included) on ``device``; leaves stay leaves."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return _leaf(t.detach().to(device), t.requires_grad)

        kwargs = {
            k: move(v) if isinstance(v, torch.Tensor) else v for k, v in self.loss_kwargs.items()
        }
        return self._replace(
            outputs={k: move(v) for k, v in self.outputs.items()},
            targets={k: v.to(device) for k, v in self.targets.items()},
            padded={k: v.to(device) for k, v in self.padded.items()},
            loss_kwargs=kwargs,
        )

    def with_grad(self) -> MultiTaskBatch:
        """Copy whose floating outputs are fresh leaf tensors requiring grad."""
        return self._replace(
            outputs={k: _leaf(_same_layout_copy(v), True) for k, v in self.outputs.items()}
        )

    def requires_grad_(self) -> MultiTaskBatch:
        """Make the floating outputs leaf tensors requiring grad, in place; returns ``self``."""
        self.outputs = self.with_grad().outputs
        return self

    def with_garbage(
        self, fill: float | torch.Tensor | Mapping[str, float | torch.Tensor]
    ) -> MultiTaskBatch:
        """Copy with every padded position of every output overwritten by ``fill``.

        Valid positions, targets and layouts (non-contiguous stays non-contiguous) are kept;
        an output that required grad is replaced by a new leaf that requires grad.

        Args:
            fill: a float (cast to each output's dtype: ``1e308`` becomes ``inf`` in float32),
                a tensor of an output's shape (used where that output is padded; only usable
                when every padded output has that shape), or a mapping output key -> float or
                tensor (outputs not named are left as they are).

        Raises:
            HarnessUsageError: if a fill tensor's shape does not match its output.
        """
        outputs: dict[str, torch.Tensor] = {}
        for key, out in self.outputs.items():
            value = fill.get(key) if isinstance(fill, Mapping) else fill
            padded = self.padded[key]
            copy = out.detach().clone()
            if value is not None and bool(padded.any()):
                if isinstance(value, torch.Tensor):
                    if value.shape != out.shape:
                        raise HarnessUsageError(
                            f"with_garbage: fill tensor of shape {tuple(value.shape)} does not "
                            f"match {key} {tuple(out.shape)}; pass a float, or a dict "
                            "{output key: tensor of that shape}"
                        )
                    copy[padded] = value.detach().to(copy.device, copy.dtype)[padded]
                else:
                    copy[padded] = torch.tensor(float(value), dtype=torch.float64).to(copy.dtype)
            if not out.is_contiguous():
                copy = strided_copy(copy)
            outputs[key] = _leaf(copy, out.requires_grad)
        return self._replace(outputs=outputs)

    # ------------------------------------------------------------------ loss arguments

    def loss_inputs(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool, str]:
        """``(outputs, targets, is_classifier, encoder_type)``: ``forward``'s arguments."""
        return self.outputs, self.targets, self.is_classifier, self.encoder_type

    def term_inputs(
        self,
        term: str,
        *,
        pairwise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[Any, ...]:
        """Positional arguments of ``MultiTaskLoss.compute_<term>`` for this batch.

        * target: ``(target_prediction, target, is_classifier)``
        * count: ``(count_prediction, counts, mask)``
        * base: ``(base_prediction, base_target, encoder_type)``; when the batch carries
          ``embeddings`` instead, ``base_prediction`` is ``pairwise(embeddings)``, so pass the
          target's pairwise-distance function (e.g. ``LossTarget.pairwise_distances``).
        * nuc: ``(nuc_predictions, nucleotides, nuc_mask)`` (``compute_nucleotide_loss``)

        Args:
            term: ``"target"``, ``"count"``, ``"base"``, ``"nuc"`` or a loss name such as
                ``"count_loss"``.
            pairwise: ``[B, E] -> [B, B]`` distance function, needed only for base with
                embeddings.

        Raises:
            HarnessUsageError: on an unknown or absent term, or base with embeddings and no
                ``pairwise``.
        """
        head = term_name(term)
        key = self.output_key(head)
        out, tg = self.outputs, self.targets
        if head == "target":
            return (out[key], tg["target"], self.is_classifier)
        if head == "count":
            return (out[key], tg["counts"], tg["mask"])
        if head == "nuc":
            return (out[key], tg["nucleotides"], tg["nuc_mask"])
        if key == "embeddings":
            if pairwise is None:
                raise HarnessUsageError(
                    "term_inputs('base'): this batch has embeddings, not base_prediction; "
                    "pass pairwise=<distance function>, e.g. "
                    "term_inputs('base', pairwise=target.pairwise_distances)"
                )
            return (pairwise(out[key]), tg["base_target"], self.encoder_type)
        return (out[key], tg["base_target"], self.encoder_type)

    # ------------------------------------------------------------------ display

    def describe(self) -> str:
        """Readable summary: sizes, dtype, device, heads, padded counts, mask dtypes, options."""
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        lines = [
            f"MultiTaskBatch({sizes}, dtype={dtype_name(self.dtype)}, device={self.device}, "
            f"kind={self.kind})",
            f"  heads: {', '.join(self.terms) or 'none'}; is_classifier={self.is_classifier}, "
            f"encoder_type={self.encoder_type!r}",
        ]
        for key, t in self.outputs.items():
            padded = int(self.padded[key].sum())
            layout = "" if t.is_contiguous() else ", non-contiguous"
            grad = ", requires_grad" if t.requires_grad else ""
            lines.append(
                f"  outputs[{key!r}]: {tuple(t.shape)}, {padded}/{t.numel()} padded"
                f"{layout}{grad}{_value_range(t, ~self.padded[key])}"
            )
        for key, t in self.targets.items():
            if key in ("mask", "nuc_mask"):
                extra = f", {int((t != 0).sum())}/{t.numel()} valid"
            else:
                extra = _value_range(t, self._target_valid(key, t))
            lines.append(f"  targets[{key!r}]: {tuple(t.shape)} {dtype_name(t.dtype)}{extra}")
        kwargs = ", ".join(f"{k}={_short(v)}" for k, v in self.loss_kwargs.items())
        lines.append(f"  loss_kwargs: {kwargs or '(defaults)'}")
        return "\n".join(lines)

    def _target_valid(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """Where a target's values matter: valid ASVs/positions, the unifrac off-diagonal."""
        masks = {"counts": "mask", "nucleotides": "nuc_mask"}
        mask = self.targets.get(masks.get(key, ""))
        if mask is not None and mask.shape == t.shape[: mask.dim()]:
            valid = mask != 0
            return valid.reshape(*valid.shape, *([1] * (t.dim() - valid.dim()))).expand(t.shape)
        if key == "base_target" and self.encoder_type == "unifrac" and t.dim() == 2:
            if t.shape[0] == t.shape[1]:
                return ~torch.eye(t.shape[0], dtype=torch.bool, device=t.device)
        return torch.ones(t.shape, dtype=torch.bool, device=t.device)

    def __repr__(self) -> str:
        return self.describe()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints falsifying examples with this hook (IPython's protocol); without it
        # a batch would print as every tensor in full.
        printer.text(self.describe())

    # ------------------------------------------------------------------ plain data

    def to_plain(self) -> dict[str, Any]:
        """Plain data (tensors, numbers, strings, lists, dicts) for a weights-only repro file."""

        def tensors_of(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in d.items()}

        kwargs = {
            k: v.detach().clone() if isinstance(v, torch.Tensor) else v
            for k, v in self.loss_kwargs.items()
        }
        return {
            "outputs": tensors_of(self.outputs),
            "targets": tensors_of(self.targets),
            "padded": tensors_of(self.padded),
            "is_classifier": self.is_classifier,
            "encoder_type": self.encoder_type,
            "loss_kwargs": kwargs,
            "kind": self.kind,
            "requires_grad": [k for k, v in self.outputs.items() if v.requires_grad],
            "noncontiguous": [k for k, v in self.outputs.items() if not v.is_contiguous()],
            "dtype": dtype_name(self.dtype),
        }

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> MultiTaskBatch:
        """Inverse of :meth:`to_plain`.

        Raises:
            HarnessUsageError: if ``data`` lacks a field or holds a non-tensor where a tensor
                belongs.
        """
        try:
            grads = set(data.get("requires_grad", []))
            strided = set(data.get("noncontiguous", []))
            outputs = {}
            for key, value in data["outputs"].items():
                t = _as_tensor(f"outputs[{key!r}]", value)
                t = strided_copy(t) if key in strided else t.contiguous()
                outputs[key] = _leaf(t, key in grads)
            batch = cls(
                outputs=outputs,
                targets={k: _as_tensor(f"targets[{k!r}]", v) for k, v in data["targets"].items()},
                padded={k: _as_tensor(f"padded[{k!r}]", v) for k, v in data["padded"].items()},
                is_classifier=bool(data["is_classifier"]),
                encoder_type=str(data["encoder_type"]),
                loss_kwargs=dict(data["loss_kwargs"]),
                kind=str(data.get("kind", "ordinary")),
            )
        except KeyError as exc:
            raise HarnessUsageError(
                f"MultiTaskBatch.from_plain: missing field {exc}; expected MultiTaskBatch."
                "to_plain() data"
            ) from None
        if "dtype" in data and outputs and batch.dtype != _dtype_from_name(data["dtype"]):
            raise HarnessUsageError(
                f"MultiTaskBatch.from_plain: outputs are {dtype_name(batch.dtype)} but the data "
                f"says dtype={data['dtype']!r}"
            )
        return batch


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise HarnessUsageError(
            f"MultiTaskBatch.from_plain: {name} must be a tensor, got {type(value).__name__}"
        )
    return value


def _short(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({[round(float(v), 6) for v in value.detach().cpu().double().tolist()]})"
    return repr(value)


def _value_range(t: torch.Tensor, valid: torch.Tensor) -> str:
    """``", valid values in [lo, hi]"`` (or the values themselves when few); ids as ints."""
    if t.dtype == torch.bool or t.is_complex():
        return ""
    floating = t.is_floating_point()
    picked = t.detach().cpu()[valid.cpu()]
    values = picked.double() if floating else picked.long()
    if values.numel() == 0:
        return ", no valid values"
    if values.numel() <= 6:
        shown = [float(v) for v in values.tolist()] if floating else values.tolist()
        return f", valid values {shown}"
    if not floating:
        return f", valid values in [{int(values.min())}, {int(values.max())}]"
    return f", valid values in [{values.min().item():.6g}, {values.max().item():.6g}]"


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise HarnessUsageError(f"{name} must be an int >= {low}, got {name}={value!r}")
    return value


def _check_range(name: str, low: int, high: int) -> None:
    if high < low:
        raise HarnessUsageError(
            f"Cannot have max_{name}={high} < min_{name}={low}; raise max_{name} or lower "
            f"min_{name}"
        )


def _check_optional_bool(name: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise HarnessUsageError(f"{name} must be None (drawn), True or False, got {name}={value!r}")
    return value


def _check_choice(name: str, value: object, choices: Iterable[str]) -> object:
    options = tuple(choices)
    if value is not None and value not in options:
        raise HarnessUsageError(
            f"{name} must be None (drawn) or one of {', '.join(map(repr, options))}, "
            f"got {name}={value!r}"
        )
    return value


def _check_terms(terms: object) -> tuple[str, ...]:
    if isinstance(terms, str) or not isinstance(terms, Iterable):
        raise HarnessUsageError(
            f"terms must be a tuple of head names from {TERMS}, got terms={terms!r}; "
            "e.g. terms=('count',)"
        )
    chosen = tuple(terms)
    unknown = [t for t in chosen if t not in TERMS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise HarnessUsageError(
            f"terms must be a non-empty tuple of distinct names from {TERMS}, got terms={chosen!r}"
        )
    return tuple(t for t in TERMS if t in chosen)


def _check_values_for(values_for: object, heads: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(values_for, str) or not isinstance(values_for, Iterable):
        raise HarnessUsageError(
            f"values_for must be None or a tuple of head names from terms={heads!r}, got "
            f"values_for={values_for!r}; e.g. values_for=('count',)"
        )
    chosen = tuple(values_for)
    if not chosen or not set(chosen) <= set(heads):
        raise HarnessUsageError(
            f"values_for must be a non-empty subset of terms={heads!r}, got "
            f"values_for={chosen!r}; add the head to terms or leave values_for=None"
        )
    return tuple(t for t in heads if t in chosen)


def _dtype_strategy(dtype: object) -> st.SearchStrategy[torch.dtype]:
    if dtype is None:
        return st.sampled_from(FLOAT_DTYPES)
    if isinstance(dtype, st.SearchStrategy):
        return dtype.map(lambda d: _check_float_dtype("dtype", d))
    return st.just(_check_float_dtype("dtype", dtype))


# --------------------------------------------------------------------------- values


def _values(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    """A ``dtype`` tensor of ``shape`` with elements of ``kind`` (exact for bfloat16)."""
    return draw(array_tensors(shape, dtype, kind))


def _nudge(value: float, dtype: torch.dtype, delta: float = 1e-6) -> float:
    """``value + delta`` rounded to ``dtype``, or the next representable value above if equal."""
    base = torch.tensor(value, dtype=dtype)
    moved = torch.tensor(value + delta, dtype=torch.float64).to(dtype)
    if not torch.isfinite(moved) or moved == base:
        moved = torch.nextafter(base, torch.tensor(math.inf, dtype=dtype))
        if not torch.isfinite(moved):
            moved = torch.nextafter(base, torch.tensor(-math.inf, dtype=dtype))
    return float(moved)


def _draw_embeddings(
    draw: st.DrawFn, batch: int, dim: int, dtype: torch.dtype, kind: str
) -> torch.Tensor:
    """``[batch, dim]`` rows; later rows may be exact or near (1e-6) duplicates of earlier."""
    # Structure first: each row is fresh, a duplicate of row j, or a near-duplicate of row j.
    plan: list[tuple[str, int, int]] = []
    for i in range(batch):
        relation = draw(st.sampled_from(["fresh", "duplicate", "near"])) if i else "fresh"
        source = draw(st.integers(0, i - 1)) if i and relation != "fresh" else i
        column = draw(st.integers(0, dim - 1)) if relation == "near" else 0
        plan.append((relation, source, column))
    rows = _values(draw, (batch, dim), dtype, kind)
    for i, (relation, source, column) in enumerate(plan):
        if relation == "fresh":
            continue
        rows[i] = rows[source]
        if relation == "near":
            value = float(rows[source, column])
            if math.isfinite(value):
                rows[i, column] = _nudge(value, dtype)
    return rows


def embeddings(
    *,
    min_batch: int = 1,
    max_batch: int = 6,
    dim: int | None = None,
    max_dim: int = 4,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] | None = None,
    kind: str = "ordinary",
) -> st.SearchStrategy[torch.Tensor]:
    """Sample embeddings ``[B, E]`` with exact-duplicate and near-duplicate (1e-6) rows.

    A near-duplicate differs from an earlier row in one component by 1e-6 rounded to the
    dtype (by one ulp when 1e-6 rounds away, e.g. in half precision). ``B = 1`` is included.

    Args:
        min_batch: smallest ``B`` (>= 1).
        max_batch: largest ``B``.
        dim: fixed ``E``; ``None`` draws ``E`` in ``1..max_dim``.
        max_dim: largest drawn ``E`` (>= 1).
        dtype: floating dtype, a strategy of them, or ``None`` for any.
        kind: kind of the values (see :func:`float_elements`).

    Raises:
        HarnessUsageError: on out-of-range sizes, a bad dtype or kind.
    """
    _check_int("min_batch", min_batch, 1)
    _check_int("max_batch", max_batch, 1)
    _check_range("batch", min_batch, max_batch)
    _check_int("max_dim", max_dim, 1)
    if dim is not None:
        _check_int("dim", dim, 1)
    kind = _check_kind(kind)
    dtypes_ = _dtype_strategy(dtype)

    @st.composite
    def draw_embeddings(draw: st.DrawFn) -> torch.Tensor:
        chosen = draw(dtypes_)
        batch = draw(st.integers(min_batch, max_batch))
        e = dim if dim is not None else draw(st.integers(1, max_dim))
        return _draw_embeddings(draw, batch, e, chosen, kind)

    return draw_embeddings()


def _draw_penalty(draw: st.DrawFn) -> float:
    return draw(
        st.one_of(
            st.sampled_from([1.0, 0.0, 0.5, 2.0]),
            st.floats(0.0, 10.0, allow_subnormal=False),
        )
    )


def _draw_class_weights(draw: st.DrawFn, num_classes: int, labels: np.ndarray) -> torch.Tensor:
    """``[K]`` float32 weights with zeros, sometimes zero on every selected class."""
    weights = draw(
        hnp.arrays(
            np.float32,
            (num_classes,),
            elements=st.one_of(
                st.sampled_from([1.0, 0.0, 0.5, 2.0]),
                st.floats(0.0, 10.0, width=32, allow_subnormal=False),
            ),
        )
    )
    if draw(st.booleans()):
        weights[np.unique(labels)] = 0.0  # C-WEIGHT-1: the selected weights sum to 0
    return torch.from_numpy(weights.copy())


def _asv_structure(
    draw: st.DrawFn, batch: int, asvs: int, length: int, *, positions: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validity of ASVs ``[B, A]`` and of positions ``[B, A, L]`` (only inside valid ASVs).

    With ``positions=False`` the positions are not drawn (``None``): the ASVs' validity is
    drawn first and does not depend on them.
    """
    layout = draw(st.sampled_from(["trailing_padding", "leading_padding", "interleaved"]))
    if layout == "interleaved":
        asv_valid = draw(hnp.arrays(np.bool_, (batch, asvs)))
        if not positions:
            return asv_valid, None
        pos_valid = draw(hnp.arrays(np.bool_, (batch, asvs, length)))
    else:
        counts = np.array(draw(st.lists(st.integers(0, asvs), min_size=batch, max_size=batch)))
        if layout == "trailing_padding":
            asv_valid = np.arange(asvs) < counts[:, None]
        else:
            asv_valid = np.arange(asvs) >= asvs - counts[:, None]
        if not positions:
            return asv_valid, None
        lengths = np.array(
            draw(st.lists(st.integers(0, length), min_size=batch * asvs, max_size=batch * asvs))
        ).reshape(batch, asvs)
        if layout == "trailing_padding":
            pos_valid = np.arange(length) < lengths[..., None]
        else:
            pos_valid = np.arange(length) >= length - lengths[..., None]
    return asv_valid, pos_valid & asv_valid[..., None]


class _BatchOptions(NamedTuple):
    """What :func:`multitask_batches` was built with, checked: the arguments of its draws."""

    heads: tuple[str, ...]
    drawn: tuple[str, ...]
    dtypes_: st.SearchStrategy[torch.dtype]
    classifier: bool | None
    encoder_type: str | None
    embeddings: bool | None
    class_weights: bool | None
    kind: str
    truths: str
    min_batch: int
    max_batch: int
    max_asvs: int
    max_len: int
    vocab: int
    max_classes: int
    max_features: int
    mask_dtype: torch.dtype | None
    allow_noncontiguous: bool


# Defined once, not per multitask_batches() call: decorating a composite reads and parses its
# source (Hypothesis checks that it uses draw), 4.8 ms for this one, and the contract builds
# 99 batch strategies in each process that collects it. The draws are the same.
@st.composite
def _draw_batch(draw: st.DrawFn, options: _BatchOptions) -> MultiTaskBatch:
    (
        heads,
        drawn,
        dtypes_,
        classifier,
        encoder_type,
        embeddings,
        class_weights,
        kind,
        truths,
        min_batch,
        max_batch,
        max_asvs,
        max_len,
        vocab,
        max_classes,
        max_features,
        mask_dtype,
        allow_noncontiguous,
    ) = options
    # ---- stage 1: sizes, structure and options
    chosen = draw(dtypes_)
    batch = draw(st.integers(min_batch, max_batch))
    outputs: dict[str, torch.Tensor] = {}
    targets: dict[str, torch.Tensor] = {}
    padded: dict[str, torch.Tensor] = {}
    kwargs: dict[str, Any] = {}
    is_classifier = False
    encoder = "unifrac"
    use_embeddings = False
    # Sizes and validity that only the masked heads' tensors use are drawn for them alone
    # (values_for): no option or other head depends on them.
    masked = "count" in drawn or "nuc" in drawn
    if masked:
        asvs = draw(st.integers(1, max_asvs))
        length = draw(st.integers(1, max_len)) if "nuc" in drawn else 1
        v = draw(st.integers(1, vocab)) if "nuc" in drawn else 1
        asv_valid, pos_valid = _asv_structure(draw, batch, asvs, length, positions="nuc" in drawn)
        mdtype = mask_dtype or draw(st.sampled_from(MASK_DTYPES))
    if "target" in heads:
        is_classifier = classifier if classifier is not None else draw(st.booleans())
        if is_classifier:
            k = draw(st.integers(1, max_classes))
            # Labels from a drawn subset of classes: imbalanced and absent classes.
            present = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k))
            labels = np.array(
                draw(st.lists(st.sampled_from(present), min_size=batch, max_size=batch)),
                dtype=np.int64,
            )
            weighted = class_weights if class_weights is not None else draw(st.booleans())
            if weighted:
                kwargs["class_weights"] = _draw_class_weights(draw, k, labels)
        else:
            d = draw(st.integers(1, max_features))
            kwargs["target_loss_type"] = draw(st.sampled_from(TARGET_LOSS_TYPES))
    if "base" in heads:
        if embeddings:
            encoder = "unifrac"
        else:
            encoder = encoder_type or draw(st.sampled_from(ENCODER_TYPES))
        if encoder == "unifrac":
            use_embeddings = embeddings if embeddings is not None else draw(st.booleans())
            if use_embeddings:
                e = draw(st.integers(1, max_features))
    penalties = {name: _draw_penalty(draw) for name in _PENALTY_NAMES}
    kwargs.update(penalties)

    # ---- stage 2: values
    def values(shape: tuple[int, ...], value_kind: str = kind) -> torch.Tensor:
        return _values(draw, shape, chosen, value_kind)

    if "target" in drawn:
        if is_classifier:
            if kind == "ordinary":
                logits = values((batch, k)).double()
                log_probs = torch.log_softmax(logits, dim=-1).to(chosen)
            else:
                # Any non-positive value is a log-probability as far as NLL goes.
                log_probs = -values((batch, k)).abs()
            outputs["target_prediction"] = log_probs
            targets["target"] = torch.from_numpy(labels)
        else:
            outputs["target_prediction"] = values((batch, d))
            targets["target"] = values((batch, d), truths)
        padded["target_prediction"] = torch.zeros(
            outputs["target_prediction"].shape, dtype=torch.bool
        )
    if "count" in drawn:
        pred = values((batch, asvs, 1))
        true = values((batch, asvs, 1), truths)
        outputs["count_prediction"] = pred
        targets["counts"] = true
        targets["mask"] = as_mask(asv_valid, mdtype)
        padded["count_prediction"] = torch.from_numpy(~asv_valid[..., None].copy())
    if "base" in drawn:
        if encoder == "faith_pd":
            outputs["base_prediction"] = values((batch, 1))
            targets["base_target"] = values((batch, 1), truths).abs()
            padded["base_prediction"] = torch.zeros((batch, 1), dtype=torch.bool)
        else:
            upper = values((batch, batch), truths).abs().triu(diagonal=1)
            targets["base_target"] = upper + upper.T
            diagonal = torch.eye(batch, dtype=torch.bool)
            if use_embeddings:
                outputs["embeddings"] = _draw_embeddings(draw, batch, e, chosen, kind)
                padded["embeddings"] = torch.zeros((batch, e), dtype=torch.bool)
            else:
                outputs["base_prediction"] = values((batch, batch))
                padded["base_prediction"] = diagonal
    if "nuc" in drawn:
        assert pos_valid is not None  # drawn with the nuc head
        outputs["nuc_predictions"] = values((batch, asvs, length, v))
        ids = draw(hnp.arrays(np.int64, (batch, asvs, length), elements=st.integers(0, v - 1)))
        pad_id = draw(st.sampled_from([_PAD_ID, v]))
        targets["nucleotides"] = torch.from_numpy(np.where(pos_valid, ids, pad_id))
        targets["nuc_mask"] = as_mask(pos_valid, mdtype)
        padded["nuc_predictions"] = torch.from_numpy(
            np.broadcast_to(~pos_valid[..., None], (batch, asvs, length, v)).copy()
        )
    if allow_noncontiguous:
        for key in list(outputs):
            if outputs[key].numel() >= 2 and draw(st.booleans()):
                outputs[key] = strided_copy(outputs[key])
    return MultiTaskBatch(
        outputs=outputs,
        targets=targets,
        padded=padded,
        is_classifier=is_classifier,
        encoder_type=encoder,
        loss_kwargs=kwargs,
        kind=kind,
    )


def multitask_batches(
    *,
    terms: Iterable[str] = TERMS,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] | None = None,
    classifier: bool | None = None,
    encoder_type: str | None = None,
    embeddings: bool | None = None,
    kind: str = "ordinary",
    truth_kind: str | None = None,
    min_batch: int = 1,
    max_batch: int = 6,
    max_asvs: int = 5,
    max_len: int = 6,
    vocab: int = 6,
    max_classes: int = 4,
    max_features: int = 3,
    mask_dtype: torch.dtype | None = None,
    class_weights: bool | None = None,
    allow_noncontiguous: bool = False,
    values_for: Iterable[str] | None = None,
) -> st.SearchStrategy[MultiTaskBatch]:
    """Ragged, padded multi-task loss batches (:class:`MultiTaskBatch`) of the requested heads.

    Sizes are drawn first (``B`` in ``min_batch..max_batch``, ``A`` in ``1..max_asvs``, ``L``
    in ``1..max_len``, ``V`` in ``1..vocab``, per-sample ASV counts ``0..A``, per-ASV lengths
    ``0..L`` with trailing, leading or interleaved padding), then values: predictions of
    ``kind`` and truths of ``truth_kind`` at valid positions. Penalties (0 included),
    ``target_loss_type``, class weights (zeros included, sometimes zero for every class
    present) and the mask dtype are drawn too.

    Args:
        terms: heads to include, from ``("target", "count", "base", "nuc")``.
        dtype: floating dtype of every output, a strategy of dtypes, or ``None`` for any.
        classifier: target head is classification (``[B, K]`` log-probs vs ``[B]`` ids);
            ``None`` draws it.
        encoder_type: ``"unifrac"`` or ``"faith_pd"``; ``None`` draws it.
        embeddings: with unifrac, give ``outputs["embeddings"]`` instead of
            ``base_prediction``; ``None`` draws it.
        kind: values of the outputs at valid positions: ``"ordinary"``, ``"extreme"``,
            ``"garbage"``.
        truth_kind: values of the float truths; ``None`` means ``kind``, except ordinary
            truths when ``kind="garbage"`` (so garbage is in the predictions).
        min_batch: smallest ``B`` (>= 1).
        max_batch: largest ``B``.
        max_asvs: largest ``A`` (>= 1).
        max_len: largest ``L`` (>= 1).
        vocab: largest ``V`` (>= 1).
        max_classes: largest ``K`` (>= 1).
        max_features: largest regression ``D`` and embedding ``E`` (>= 1).
        mask_dtype: fixed dtype for ``mask`` and ``nuc_mask``; ``None`` draws one of
            bool, int64, int32, float32, float64 (the same for both masks).
        class_weights: classification with class weights; ``None`` draws it.
        allow_noncontiguous: sometimes give outputs as non-contiguous views.
        values_for: heads (a subset of ``terms``) whose tensors are drawn; ``None`` means
            every head. The other heads' sizes and options (classifier, class weights,
            encoder, loss type) are still drawn, their tensors are not: the batch is
            distributed as a batch of every head in ``terms`` with only these heads kept,
            without the cost of drawing values that would be thrown away.

    Raises:
        HarnessUsageError: when built with an invalid argument (naming it, its value and a
            fix), e.g. ``embeddings=True`` with ``encoder_type="faith_pd"``.
    """
    heads = _check_terms(terms)
    drawn = heads if values_for is None else _check_values_for(values_for, heads)
    dtypes_ = _dtype_strategy(dtype)
    _check_optional_bool("classifier", classifier)
    _check_choice("encoder_type", encoder_type, ENCODER_TYPES)
    _check_optional_bool("embeddings", embeddings)
    _check_optional_bool("class_weights", class_weights)
    kind = _check_kind(kind)
    if truth_kind is not None:
        truth_kind = _check_kind(truth_kind)
    truths = truth_kind or ("ordinary" if kind == "garbage" else kind)
    _check_int("min_batch", min_batch, 1)
    _check_int("max_batch", max_batch, 1)
    _check_range("batch", min_batch, max_batch)
    for name, value in (
        ("max_asvs", max_asvs),
        ("max_len", max_len),
        ("vocab", vocab),
        ("max_classes", max_classes),
        ("max_features", max_features),
    ):
        _check_int(name, value, 1)
    _check_mask_dtype(mask_dtype)
    _check_bool("allow_noncontiguous", allow_noncontiguous)
    if embeddings and "base" not in heads:
        raise HarnessUsageError(
            f"embeddings=True needs the base head, got terms={heads!r}; add 'base' to terms "
            "or leave embeddings=None"
        )
    if embeddings and encoder_type == "faith_pd":
        raise HarnessUsageError(
            "embeddings=True needs encoder_type='unifrac' (faith_pd takes base_prediction "
            "[B, 1]), got encoder_type='faith_pd'; use encoder_type='unifrac' or None"
        )
    if class_weights and classifier is False:
        raise HarnessUsageError(
            "class_weights=True needs classification, got classifier=False; use "
            "classifier=True or None"
        )
    if class_weights and "target" not in heads:
        raise HarnessUsageError(
            f"class_weights=True needs the target head, got terms={heads!r}; add 'target'"
        )

    return _draw_batch(
        _BatchOptions(
            heads=heads,
            drawn=drawn,
            dtypes_=dtypes_,
            classifier=classifier,
            encoder_type=encoder_type,
            embeddings=embeddings,
            class_weights=class_weights,
            kind=kind,
            truths=truths,
            min_batch=min_batch,
            max_batch=max_batch,
            max_asvs=max_asvs,
            max_len=max_len,
            vocab=vocab,
            max_classes=max_classes,
            max_features=max_features,
            mask_dtype=mask_dtype,
            allow_noncontiguous=allow_noncontiguous,
        )
    )
