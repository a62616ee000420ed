"""C-WEIGHTS-1 end to end: padded garbage never reaches a weight; a bad batch never steps.

Both checks train the :class:`~robustness.probe.ProbeModel` with a plain training loop, the one
anybody writes first (``zero_grad``, forward, ``loss_fn(outputs, targets, ...)["total_loss"]``,
``backward``, ``optimizer.step()``), and judge only the parameters. They rely on nothing but
the loss under test: no step guard, no gradient clipping, no anomaly detection. So a loss
passes only if it keeps the weights safe by itself, or by refusing (raising on) a bad batch.

* :func:`check_weights_stay_finite`: a few steps on a batch whose model outputs hold garbage
  (NaN, ±inf, ``finfo.max``) at every padded position; every parameter must stay finite.
* :func:`check_nonfinite_batch_leaves_weights_unchanged`: one step on a batch with a non-finite
  value at one *valid* output position; an exception from the loss counts as a refused step
  (the contract's expected behaviour); if the loss returns, the loop does backward and step as
  a naive loop would, and the parameters must still be bit-identical to before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustness.errors import ContractViolation, HarnessUsageError, ReplaySpec
from robustness.probe import OutputInjector, ProbeModel, probe_inputs
from robustness.strategies import MultiTaskBatch
from robustness.target import LossTarget

__all__ = [
    "OPTIMIZERS",
    "RULE",
    "check_nonfinite_batch_leaves_weights_unchanged",
    "check_weights_stay_finite",
    "make_optimizer",
]

RULE = "C-WEIGHTS-1"
_TERM = "total_loss"

#: Optimizers of the training loop, with realistic settings: momentum and Adam keep state, so
#: a step taken after a good one moves the weights even where its gradient is zero.
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-2}),
}


def make_optimizer(name: str, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``name`` (``"sgd"`` or ``"adam"``) over ``params``, with fixed settings.

    Raises:
        HarnessUsageError: on an unknown name.
    """
    _check_optimizer(name)
    cls, settings = OPTIMIZERS[name]
    return cls(params, **settings)


def _check_optimizer(name: object) -> None:
    if name not in OPTIMIZERS:
        raise HarnessUsageError(
            f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got optimizer={name!r}"
        )


def _describe_optimizer(name: str) -> str:
    _, settings = OPTIMIZERS[name]
    return f"{name}({', '.join(f'{k}={v}' for k, v in settings.items())})"


def _check_int(name: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise HarnessUsageError(f"{name} must be an int >= {low}, got {name}={value!r}")
    return value


def _check_batch(batch: object) -> MultiTaskBatch:
    if not isinstance(batch, MultiTaskBatch):
        raise HarnessUsageError(
            f"batch must be a MultiTaskBatch (from multitask_batches()), got {type(batch).__name__}"
        )
    return batch


class _Loop:
    """The probe, its optimizer, the loss and the inputs of one batch, on one device."""

    def __init__(
        self, loss: LossTarget, batch: MultiTaskBatch, optimizer: str, device: str, seed: int
    ) -> None:
        self.batch = batch.to(device)
        self.model = ProbeModel.for_batch(batch, seed=seed).to(device)
        self.optimizer = make_optimizer(optimizer, self.model.parameters())
        self.loss_fn = loss.make(**self.batch.loss_kwargs)
        self.inputs = probe_inputs(self.batch)

    def forward(
        self, inject: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor]:
        outputs = self.model(*self.inputs)
        return inject(outputs) if inject is not None else outputs

    def loss(self, outputs: Mapping[str, Tensor]) -> tuple[Any, Tensor]:
        """The loss's result and its ``total_loss``; exceptions from the loss propagate."""
        terms = self.loss_fn(
            dict(outputs),
            self.batch.targets,
            is_classifier=self.batch.is_classifier,
            encoder_type=self.batch.encoder_type,
        )
        return terms, terms["total_loss"]


def _terms_summary(terms: Any) -> str:
    if not isinstance(terms, Mapping):
        return f"(the loss returned a {type(terms).__name__})"
    parts = []
    for name, value in terms.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            parts.append(f"{name}={float(value.detach().double().cpu()):.6g}")
        else:
            parts.append(f"{name}={type(value).__name__}")
    return ", ".join(parts)


def _nonfinite_report(named: Iterable[tuple[str, Tensor | None]]) -> list[tuple[str, str]]:
    """``(name, "3 of 8 entries non-finite (nan: 3), shape (1, 8)")`` for each bad tensor."""
    report = []
    for name, t in named:
        if t is None:
            continue
        bad = ~torch.isfinite(t.detach())
        n_bad = int(bad.sum())
        if n_bad:
            n_nan = int(torch.isnan(t.detach()).sum())
            kinds = ", ".join(
                f"{label}: {n}" for label, n in (("nan", n_nan), ("inf", n_bad - n_nan)) if n
            )
            report.append(
                (
                    name,
                    f"{n_bad} of {t.numel()} entries non-finite ({kinds}), shape {tuple(t.shape)}",
                )
            )
    return report


def _lines(report: list[tuple[str, str]]) -> str:
    return "\n".join(f"{name}: {text}" for name, text in report) or "none"


def check_weights_stay_finite(
    loss: LossTarget,
    batch: MultiTaskBatch,
    *,
    optimizer: str = "sgd",
    steps: int = 3,
    garbage: float = math.nan,
    device: str = "cpu",
    seed: int = 0,
) -> None:
    """C-WEIGHTS-1: training on padded garbage keeps every parameter finite.

    Trains a :class:`~robustness.probe.ProbeModel` built for ``batch`` (its heads, sizes and
    dtype) for ``steps`` plain steps on ``batch``'s targets, with ``garbage`` written
    straight-through at every padded position of every output (see
    :meth:`~robustness.probe.OutputInjector.at_padding`). Only the batch's shapes, targets,
    masks and loss options are used; the outputs are the probe's.

    Args:
        loss: the loss target.
        batch: the batch (its valid targets should be finite and moderate, e.g. ``ordinary``).
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"`` (see :data:`OPTIMIZERS`).
        steps: number of optimizer steps (>= 1).
        garbage: the value at padded outputs: NaN, ±inf, ``finfo.max``, ...
        device: where to train (``"cpu"`` or ``"cuda"``).
        seed: the probe's initialisation seed.

    Raises:
        ContractViolation: naming the first parameter (in declaration order) that is non-finite
            after a step, the step, how many entries, the gradients and the loss terms at that
            step; or when the loss raises although every valid output is finite.
        HarnessUsageError: on a bad argument.
    """
    batch = _check_batch(batch)
    _check_int("steps", steps, 1)
    _check_optimizer(optimizer)
    loop = _Loop(loss, batch, optimizer, device, seed)
    injector = OutputInjector.at_padding(loop.batch, garbage)
    replay = ReplaySpec.of(
        check_weights_stay_finite,
        "loss",
        batch=batch,
        optimizer=optimizer,
        steps=steps,
        garbage=garbage,
        device=device,
        seed=seed,
    )
    details: dict[str, object] = {
        "input": batch.describe(),
        "garbage": f"{injector.describe()}, straight-through (gradients reach the model)",
        "outputs": "the probe's, for the batch's heads and shapes (its output values unused)",
        "probe": f"ProbeModel(seed={seed}, {loop.model.num_parameters()} parameters)",
        "optimizer": _describe_optimizer(optimizer),
        "device": device,
    }
    handle = injector.attach(loop.model)
    try:
        for step in range(1, steps + 1):
            loop.optimizer.zero_grad(set_to_none=True)
            outputs = loop.forward()
            try:
                terms, total = loop.loss(outputs)
                torch.autograd.backward(total)
            except HarnessUsageError:
                raise
            except Exception as exc:
                raise ContractViolation(
                    RULE,
                    _TERM,
                    f"the loss raised {type(exc).__name__} at step {step} although every valid "
                    "output is finite (garbage only at padded positions)",
                    details={**details, "error": f"{type(exc).__name__}: {exc}"},
                    replay=replay,
                ) from exc
            grads = _nonfinite_report((n, p.grad) for n, p in loop.model.named_parameters())
            loop.optimizer.step()
            bad = _nonfinite_report(loop.model.named_parameters())
            if bad:
                name, text = bad[0]
                raise ContractViolation(
                    RULE,
                    _TERM,
                    f"parameter {name!r} became non-finite after optimizer step {step} of "
                    f"{steps}: {text}",
                    details={
                        **details,
                        "step": f"{step} of {steps}",
                        "loss terms": _terms_summary(terms),
                        "non-finite gradients": _lines(grads),
                        "non-finite parameters": _lines(bad),
                        "hint": "padded positions must be masked by selection (torch.where), "
                        "never by multiplication: nan * 0 = nan in values and gradients",
                    },
                    replay=replay,
                )
    finally:
        handle.remove()


def check_nonfinite_batch_leaves_weights_unchanged(
    loss: LossTarget,
    batch: MultiTaskBatch,
    *,
    optimizer: str = "sgd",
    value: float = math.nan,
    key: str | None = None,
    position: int = 0,
    warmup_steps: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> None:
    """C-WEIGHTS-1: a batch with a non-finite valid output never changes the parameters.

    Trains the probe ``warmup_steps`` clean steps on ``batch`` (so the optimizer has momentum
    or Adam state, and a step taken on the bad batch would move the weights whatever its
    gradient), then writes ``value`` at one valid position of one output and runs one more
    plain step: an exception from the loss (or its backward) is a refused step; otherwise
    ``optimizer.step()`` runs. Afterwards every parameter must equal its value before the bad
    batch, bit for bit.

    Args:
        loss: the loss target.
        batch: the batch; it needs at least one valid output position.
        optimizer: ``"sgd"`` or ``"adam"`` (see :data:`OPTIMIZERS`).
        value: the non-finite value (NaN, ``inf``, ``-inf``).
        key: the output to corrupt; ``None`` picks the first one with a valid position.
        position: which valid position of that output (row-major, modulo their number).
        warmup_steps: clean steps before the bad batch (>= 0).
        device: where to train.
        seed: the probe's initialisation seed.

    Raises:
        ContractViolation: listing the changed parameters, what the loss returned, and the
            injected position; or when the loss raises on the clean warm-up batch.
        HarnessUsageError: on a bad argument, a finite ``value``, or no valid position.
    """
    batch = _check_batch(batch)
    _check_int("warmup_steps", warmup_steps, 0)
    _check_int("position", position, 0)
    if math.isfinite(value):
        raise HarnessUsageError(
            f"value must be non-finite (nan, inf or -inf), got value={value!r}; a finite value "
            "is a legitimate batch that a step may learn from"
        )
    _check_optimizer(optimizer)
    loop = _Loop(loss, batch, optimizer, device, seed)
    injector = OutputInjector.at_valid_position(loop.batch, value, key=key, position=position)
    ((bad_key, bad_index),) = injector.first_positions().items()
    replay = ReplaySpec.of(
        check_nonfinite_batch_leaves_weights_unchanged,
        "loss",
        batch=batch,
        optimizer=optimizer,
        value=value,
        key=key,
        position=position,
        warmup_steps=warmup_steps,
        device=device,
        seed=seed,
    )
    details: dict[str, object] = {
        "input": batch.describe(),
        "injected": f"{value} at {bad_key}{list(bad_index)} (a valid position)",
        "outputs": "the probe's, for the batch's heads and shapes (its output values unused)",
        "probe": f"ProbeModel(seed={seed}, {loop.model.num_parameters()} parameters)",
        "optimizer": f"{_describe_optimizer(optimizer)}, after {warmup_steps} clean step(s)",
        "device": device,
    }
    for step in range(1, warmup_steps + 1):
        loop.optimizer.zero_grad(set_to_none=True)
        try:
            _, total = loop.loss(loop.forward())
            torch.autograd.backward(total)
        except HarnessUsageError:
            raise
        except Exception as exc:
            raise ContractViolation(
                RULE,
                _TERM,
                f"the loss raised {type(exc).__name__} on the clean warm-up batch (step {step}), "
                "whose outputs are all finite",
                details={**details, "error": f"{type(exc).__name__}: {exc}"},
                replay=replay,
            ) from exc
        loop.optimizer.step()
    bad = _nonfinite_report(loop.model.named_parameters())
    if bad:
        raise ContractViolation(
            RULE,
            _TERM,
            f"parameter {bad[0][0]!r} became non-finite during the clean warm-up: {bad[0][1]}",
            details={**details, "non-finite parameters": _lines(bad)},
            replay=replay,
        )
    before = {name: p.detach().clone() for name, p in loop.model.named_parameters()}

    loop.optimizer.zero_grad(set_to_none=True)
    outputs = loop.forward(injector)
    try:
        terms, total = loop.loss(outputs)
        torch.autograd.backward(total)
    except HarnessUsageError:
        raise
    except Exception:
        # The loss refused the batch: a training loop that lets the error propagate (or
        # catches it and moves on) never reaches optimizer.step().
        refused = True
    else:
        refused = False
        loop.optimizer.step()
    changed = []
    for name, param in loop.model.named_parameters():
        if not torch.equal(param.detach(), before[name]):
            differ = int((param.detach() != before[name]).sum())
            nonfinite = int((~torch.isfinite(param.detach())).sum())
            changed.append(
                f"{name}: {differ} of {param.numel()} entries differ ({nonfinite} now non-finite)"
            )
    if changed:
        outcome = (
            "raised, yet the parameters changed"
            if refused
            else f"returned {_terms_summary(terms)}; backward and optimizer.step() ran"
        )
        raise ContractViolation(
            RULE,
            _TERM,
            f"a batch with {value} at a valid position of {bad_key} changed "
            f"{len(changed)} parameter tensor(s)",
            details={
                **details,
                "loss": outcome,
                "changed parameters": "\n".join(changed),
                "expected": "the loss raises (e.g. a ValueError naming the term, the tensor and "
                "the count of bad entries) before computing anything, so the step is refused",
            },
            replay=replay,
        )
