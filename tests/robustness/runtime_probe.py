"""A loss target that fails unless it runs as the gate's processes must: one torch thread, a
frozen garbage-collector heap (``robustness.gate_runtime``). Every term is ``aam``'s.

The contract's tensors are tiny: more intra-op threads only add synchronization, and two
xdist workers with two threads each oversubscribe a 2-core machine (a third of the gate's CPU
went to OpenMP waits); full collections rescanning the start-up heap cost another tenth.
"""

from __future__ import annotations

import gc
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
        if gc.get_freeze_count() == 0:
            raise RuntimeError("the gate ran the contract without freezing the start-up heap")
        return super().forward(*args, **kwargs)
