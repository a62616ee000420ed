"""A metrics target whose ``sync_distributed`` hangs on rank 1 (importable by name for workers).

``aam``'s metrics, with a regression state whose rank 1 sleeps far longer than any timeout
before the collectives: the group never answers, like a rank stuck in a deadlock. Used to show
that a hang is reported once and not retried while Hypothesis shrinks.
"""

from __future__ import annotations

import time

import torch.distributed as dist

from aam.training import metrics as _aam
from aam.training.metrics import (
    StreamingClassificationMetrics,
    StreamingCountMetrics,
    compute_classification_metrics,
    compute_count_metrics,
    compute_regression_metrics,
)

__all__ = [
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
    "StreamingRegressionMetrics",
    "compute_classification_metrics",
    "compute_count_metrics",
    "compute_regression_metrics",
]

#: Far longer than the timeout a test sets; the pool terminates the sleeping worker.
HANG_SECONDS = 600.0


class StreamingRegressionMetrics(_aam.StreamingRegressionMetrics):
    def sync_distributed(self, group=None):
        if dist.get_rank(group) == 1:
            time.sleep(HANG_SECONDS)
        super().sync_distributed(group)
