"""Mutation testing of the target's own loss and metric code (``python -m robustness mutate``).

``operators`` (the numerical bug classes), ``generation`` (mutants, ids, diffs), ``loading``
(a mutant as a temporary package), ``running`` (worker processes, test selection),
``session`` (one run), ``reporting`` (score and tables), ``sharding`` (``--shard``,
``--merge``), ``since`` (``--since REV``), ``equivalent`` (the reviewed equivalent mutants),
``cli`` (the command).
"""

from __future__ import annotations

from robustness.mutate.cli import run_mutate

__all__ = ["run_mutate"]
