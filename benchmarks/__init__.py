"""Performance benchmarks of ``aam`` and the ``robustness`` gate (issue 5).

``python -m benchmarks`` measures, side by side in one process: ``MultiTaskLoss`` forward +
backward against plain-torch baselines, the streaming metrics against a Python loop and
torchmetrics, how both scale with size, and (``--gate``) the gate's wall time. See
:mod:`benchmarks.run` for the options.
"""

from __future__ import annotations

__all__: list[str] = []
