"""A loss target that fails unless torch runs one intra-op thread, as the gate's workers must.

The contract's tensors are tiny: more intra-op threads only add synchronization, and two
xdist workers with two threads each oversubscribe a 2-core machine (a third of the gate's CPU
went to OpenMP waits). Every term is ``aam``'s.
"""

from __future__ import annotations

from typing import Any

import torch

from aam.training.losses import MultiTaskLoss as _Correct
from aam.training.losses import compute_pairwise_distances

__all__ = ["MultiTaskLoss", "compute_pairwise_distances"]


class MultiTaskLoss(_Correct):
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        if threads != 1:
            raise RuntimeError(f"the gate ran the contract with {threads} torch threads, not 1")
        return super().forward(*args, **kwargs)
