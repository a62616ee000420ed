"""Small collective helpers shared by the metrics' sync and the gathered loss (torch only).

Kept apart from :mod:`aam.training.distributed` so that the metrics do not import the losses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_stacked", "communication_device", "is_distributed"]

_CPU = torch.device("cpu")


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` default process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def communication_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device collectives of ``group`` take tensors on (cpu for gloo/mpi, else the GPU).

    Raises:
        RuntimeError: if no process group is initialized.
    """
    backend = str(dist.get_backend(group))
    # A mixed backend ("cpu:gloo,cuda:nccl") takes cpu tensors too.
    if "gloo" in backend or "mpi" in backend:
        return _CPU
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None:
        return _CPU
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def all_gather_stacked(local: Tensor, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """Every rank's ``local`` (same shape and dtype on every rank), stacked in rank order.

    A collective: every rank of ``group`` must call it. No autograd (the result is constant).

    Args:
        local: this rank's tensor, any shape.
        group: the process group (default: the default group).

    Returns:
        ``[world_size, *local.shape]`` on the communication device of ``group``.
    """
    sent = local.detach().to(communication_device(group)).contiguous()
    out = [torch.empty_like(sent) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, sent, group=group)
    return torch.stack(out)
