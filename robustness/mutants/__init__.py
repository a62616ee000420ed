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


CORPUS: tuple[Mutant, ...] = ()


def by_name(name: str) -> Mutant:
    """Look up a mutant by name.

    Raises:
        KeyError: naming the known mutants, if there is none called ``name``.
    """
    for mutant in CORPUS:
        if mutant.name == name:
            return mutant
    raise KeyError(f"no mutant {name!r}; known: {', '.join(m.name for m in CORPUS)}")
