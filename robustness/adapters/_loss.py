"""``adapt_loss``: present a loss with other names and conventions as the contract's interface.

The contract calls ``Loss(penalty=..., nuc_penalty=..., ...)``, the four ``compute_*`` methods
with fixed positional arguments, and ``forward(outputs, targets, is_classifier=...,
encoder_type=...)`` returning a dict keyed ``target_loss`` ... ``total_loss``. A loss written
elsewhere usually differs in names, argument order or padding convention; ``adapt_loss``
builds the class the contract expects around it, without copying any of its code: every
call is translated and forwarded to the wrapped loss, which computes every value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from robustness.errors import HarnessUsageError
from robustness.target import LOSS_KWARGS

__all__ = ["Converter", "adapt_loss", "nan_diagonal", "pad_ids"]

#: A call translation: ``(method, named arguments) -> named arguments`` (the contract's
#: names; for ``forward`` the keys are ``outputs``, ``targets``, ``is_classifier``,
#: ``encoder_type``). Must not modify its inputs in place.
Converter = Callable[[str, dict[str, Any]], dict[str, Any]]

_PARAMETERS: dict[str, tuple[str, ...]] = {
    "compute_target_loss": ("target_prediction", "target", "is_classifier"),
    "compute_count_loss": ("count_prediction", "counts", "mask"),
    "compute_base_loss": ("base_prediction", "base_target", "encoder_type"),
    "compute_nucleotide_loss": ("nuc_predictions", "nucleotides", "nuc_mask"),
    "forward": ("outputs", "targets", "is_classifier", "encoder_type"),
}
#: "Not given": the wrapped loss's own default applies.
_UNSET: Any = object()
_TERMS = ("target_loss", "count_loss", "base_loss", "nuc_loss", "total_loss")


def _check_names(what: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise HarnessUsageError(
            f"adapt_loss: unknown {what} {unknown[0]!r} (allowed: {', '.join(allowed)})"
        )


def adapt_loss(
    loss_cls: type[Any],
    *,
    kwargs: Mapping[str, str | None] | None = None,
    methods: Mapping[str, str] | None = None,
    arguments: Mapping[str, Sequence[str]] | None = None,
    convert: Mapping[str, Converter | Sequence[Converter]] | None = None,
    outputs: Mapping[str, str] | None = None,
    name: str | None = None,
) -> type[torch.nn.Module]:
    """A class with the contract's loss interface that forwards every call to ``loss_cls``.

    Args:
        loss_cls: the loss to check, constructed once per adapted instance.
        kwargs: contract constructor keyword -> ``loss_cls``'s keyword (``None``: not passed).
        methods: contract method -> ``loss_cls``'s method name (``compute_base_loss`` ->
            ``"unifrac_loss"``).
        arguments: contract method -> the positional arguments ``loss_cls``'s method takes,
            in its order, named with the contract's parameter names (after ``convert``); an
            argument left out is not passed (``("nuc_predictions", "nucleotides")``).
        convert: contract method -> converter(s) applied in order to the named arguments
            before the call (:func:`nan_diagonal`, :func:`pad_ids`, or your own).
        outputs: contract term -> the key ``loss_cls.forward``'s dict uses for it.
        name: the class name (default ``Adapted<loss_cls name>``).

    Returns:
        An ``nn.Module`` subclass; name it as the target (``module:Class``) with a
        module-level ``compute_pairwise_distances`` beside it.

    Raises:
        HarnessUsageError: for a contract name that does not exist (one line).

    Example:
        >>> from aam.training.losses import MultiTaskLoss
        >>> Loss = adapt_loss(MultiTaskLoss, methods={"compute_count_loss": "compute_count_loss"})
        >>> Loss(penalty=2.0).inner.penalty
        2.0
    """
    kwargs, methods = dict(kwargs or {}), dict(methods or {})
    arguments, outputs = dict(arguments or {}), dict(outputs or {})
    converters = {
        method: [found] if callable(found) else list(found)
        for method, found in (convert or {}).items()
    }
    _check_names("constructor keyword", kwargs, LOSS_KWARGS)
    for what, given in (("method", methods), ("method", arguments), ("method", converters)):
        _check_names(what, given, tuple(_PARAMETERS))
    _check_names("term", outputs, _TERMS)
    for method, order in arguments.items():
        _check_names(f"argument of {method}", dict.fromkeys(order), _PARAMETERS[method])
    for own in methods.values():
        if not callable(getattr(loss_cls, own, None)):
            raise HarnessUsageError(f"adapt_loss: {loss_cls.__name__} has no method {own!r}")

    def init(self: torch.nn.Module, **given: Any) -> None:
        torch.nn.Module.__init__(self)
        _check_names("constructor keyword", given, LOSS_KWARGS)
        translated = {}
        for key, value in given.items():
            own = kwargs.get(key, key)
            if own is not None:
                translated[own] = value
        self.inner = loss_cls(**translated)

    def call(self: torch.nn.Module, method: str, named: dict[str, Any]) -> Any:
        for converter in converters.get(method, ()):
            named = converter(method, named)
        own = getattr(self.inner, methods.get(method, method))
        if method == "forward" and method not in arguments:
            result = own(
                named["outputs"],
                named["targets"],
                is_classifier=named["is_classifier"],
                encoder_type=named["encoder_type"],
            )
        else:
            result = own(*(named[key] for key in arguments.get(method, _PARAMETERS[method])))
        if method == "forward" and outputs:
            result = dict(result)
            for ours, theirs in outputs.items():
                if theirs in result:
                    result[ours] = result.pop(theirs)
        return result

    def method_of(method: str) -> Callable[..., Any]:
        parameters = _PARAMETERS[method]

        def compute(self: torch.nn.Module, first: Any, second: Any, third: Any) -> Any:
            return call(self, method, dict(zip(parameters, (first, second, third), strict=True)))

        compute.__name__ = method
        return compute

    def forward(
        self: torch.nn.Module,
        outputs: Mapping[str, Any],
        targets: Mapping[str, Any],
        is_classifier: bool = False,
        encoder_type: str = "unifrac",
    ) -> Any:
        named = {
            "outputs": dict(outputs),
            "targets": dict(targets),
            "is_classifier": is_classifier,
            "encoder_type": encoder_type,
        }
        return call(self, "forward", named)

    def signature_init(
        self: torch.nn.Module,
        penalty: Any = _UNSET,
        nuc_penalty: Any = _UNSET,
        class_weights: Any = _UNSET,
        target_penalty: Any = _UNSET,
        count_penalty: Any = _UNSET,
        target_loss_type: Any = _UNSET,
    ) -> None:
        # Only the arguments given are passed on, so the wrapped loss keeps its own defaults.
        given = {
            "penalty": penalty,
            "nuc_penalty": nuc_penalty,
            "class_weights": class_weights,
            "target_penalty": target_penalty,
            "count_penalty": count_penalty,
            "target_loss_type": target_loss_type,
        }
        init(self, **{k: v for k, v in given.items() if v is not _UNSET})

    namespace: dict[str, Any] = {
        "__init__": signature_init,
        "forward": forward,
        "__doc__": f"{loss_cls.__name__} adapted to the robustness contract's loss interface.",
    }
    for method in _PARAMETERS:
        if method != "forward":
            namespace[method] = method_of(method)
    return type(name or f"Adapted{loss_cls.__name__}", (torch.nn.Module,), namespace)


def _base_targets(named: dict[str, Any], fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    if named.get("encoder_type") != "unifrac":
        return
    if "base_target" in named:
        named["base_target"] = fn(named["base_target"])
    elif "targets" in named and "base_target" in named["targets"]:
        named["targets"] = {**named["targets"], "base_target": fn(named["targets"]["base_target"])}


def nan_diagonal() -> Converter:
    """Converter for a pairwise base term that marks the excluded diagonal with NaN.

    The contract excludes the diagonal of a ``[B, B]`` unifrac target by position; a loss that
    instead ignores the NaN entries of its target gets the target with NaN on the diagonal
    (a copy: the caller's tensor is not modified). An integer or bool target, which the
    contract allows, becomes floating first (NaN needs a floating dtype): the prediction's
    dtype, half as float32, which is the dtype the contract computes such a target in. Other
    shapes pass through unchanged, so the wrapped loss still sees, and must reject, a
    mismatched shape.
    """

    def converter(method: str, named: dict[str, Any]) -> dict[str, Any]:
        named = dict(named)
        outputs = named.get("outputs")
        pred = named.get("base_prediction")
        if pred is None and isinstance(outputs, Mapping):
            pred = outputs.get("base_prediction", outputs.get("embeddings"))
        dtype = pred.dtype if isinstance(pred, torch.Tensor) else torch.get_default_dtype()
        if not dtype.is_floating_point or dtype.itemsize < 4:
            dtype = torch.float32

        def to_nan(target: torch.Tensor) -> torch.Tensor:
            if target.dim() != 2 or target.shape[0] != target.shape[1]:
                return target
            if not (target.is_floating_point() or target.is_complex()):
                target = target.to(dtype)
            eye = torch.eye(target.shape[0], dtype=torch.bool, device=target.device)
            return torch.where(eye, torch.full_like(target, float("nan")), target)

        _base_targets(named, to_nan)
        return named

    return converter


def _to_pad_ids(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape[:-1] != ids.shape:
        raise ValueError(
            f"nuc_loss: nuc_predictions shape {tuple(logits.shape)} does not match "
            f"nucleotides {tuple(ids.shape)} (plus a vocabulary dimension)"
        )
    if mask.shape != ids.shape:
        raise ValueError(
            f"nuc_loss: nuc_mask shape {tuple(mask.shape)} does not match nucleotides "
            f"{tuple(ids.shape)}"
        )
    vocab = logits.shape[-1]
    valid = mask != 0
    # The pad id is reserved in the wrapped loss's convention, so an id outside [0, V) at a
    # valid position could become padding silently: refuse it here (one explicit host sync).
    bad = valid & ((ids < 0) | (ids >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"nuc_loss: {int(bad.sum())} nucleotide id(s) at valid positions outside [0, {vocab})"
        )
    shifted = torch.where(ids >= pad, ids + 1, ids)
    their_ids = torch.where(valid, shifted, torch.full_like(ids, pad))
    # A column for the pad id that no softmax ever selects: finfo.min underflows to exactly 0.
    fill = torch.full_like(logits[..., :1], torch.finfo(logits.dtype).min)
    their_logits = torch.cat([logits[..., :pad], fill, logits[..., pad:]], dim=-1)
    return their_logits, their_ids


def pad_ids(pad: int = 0, *, keep_mask: bool = True) -> Converter:
    """Converter for a nucleotide loss that marks padding with a pad id instead of a mask.

    The contract's ids lie in ``[0, V)`` with a separate ``nuc_mask``; the wrapped loss
    takes ids where ``pad`` is padding (ids ``>= pad`` move up by one) and logits with
    ``V + 1`` columns, the pad column at ``pad`` filled with ``finfo.min`` so its softmax
    weight is exactly 0 and the cross-entropy over valid positions is unchanged.

    Args:
        pad: the pad id of the wrapped loss.
        keep_mask: for ``forward``, leave ``targets["nuc_mask"]`` in place (else drop it).

    Raises (from the converted call):
        ValueError: naming ``nuc_loss`` for mismatched shapes or ids outside ``[0, V)`` at
            valid positions (the pad convention could not represent them).
    """

    def converter(method: str, named: dict[str, Any]) -> dict[str, Any]:
        named = dict(named)
        if method == "compute_nucleotide_loss":
            named["nuc_predictions"], named["nucleotides"] = _to_pad_ids(
                named["nuc_predictions"], named["nucleotides"], named["nuc_mask"], pad
            )
        elif method == "forward":
            outs, tgts = dict(named["outputs"]), dict(named["targets"])
            if "nuc_predictions" in outs and "nucleotides" in tgts and "nuc_mask" in tgts:
                outs["nuc_predictions"], tgts["nucleotides"] = _to_pad_ids(
                    outs["nuc_predictions"], tgts["nucleotides"], tgts["nuc_mask"], pad
                )
                if not keep_mask:
                    del tgts["nuc_mask"]
            named["outputs"], named["targets"] = outs, tgts
        return named

    return converter
