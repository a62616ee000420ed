"""Real ``torch.distributed`` process groups on loopback, started once and reused by checks.

A :class:`ProcessGroupPool` spawns ``world_size`` worker processes that join one process group
(gloo on cpu, NCCL on cuda) through a ``TCPStore`` served by the calling process on a free
loopback port (port 0: the OS picks it, so there is no race for a "free" port). Each
:meth:`~ProcessGroupPool.run` sends one job, a module-level function
``job(rank, world_size, payload)``, to every rank and returns every rank's outcome in rank order.
Spawning costs seconds (each worker imports torch); reusing the workers makes a job cost
milliseconds, so Hypothesis can draw many cases per group.

Time is bounded everywhere: joining the group has ``init_timeout``, each collective the group's
``op_timeout``, each job the caller's ``timeout``. A job that raises on one rank ends that
worker (its peers, blocked in a collective, then fail fast with "connection closed" instead of
waiting), the pool is closed, and the next :func:`shared_pool` call starts a fresh one. Workers
always leave with ``destroy_process_group``; the pool terminates any that do not leave in time.
"""

from __future__ import annotations

import atexit
import datetime
import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from robustness.errors import HarnessUsageError

__all__ = [
    "BACKENDS",
    "JobOutcome",
    "ProcessGroupPool",
    "close_pools",
    "job_module",
    "shared_pool",
]

#: Backends a pool can use, by device.
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}

_INIT_TIMEOUT = 90.0
_OP_TIMEOUT = 30.0
#: How long workers get to leave cleanly before they are terminated.
_GRACE = 5.0
_POLL = 0.2


@dataclass(frozen=True)
class JobOutcome:
    """One rank's outcome: ``ok`` with a ``value``, or the ``error`` text (type, message, trace)."""

    rank: int
    ok: bool
    value: Any = None
    error: str = ""


def _loopback_interface() -> str | None:
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    return None


def _tcp_store(port: int, timeout: datetime.timedelta, *, serve: bool = False) -> Any:
    """A ``TCPStore`` client of ``port`` on loopback, or (``serve``) its server."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # not in its __all__

    if serve:
        return TCPStore("127.0.0.1", port, None, True, timeout=timeout, wait_for_workers=False)
    return TCPStore("127.0.0.1", port, None, False, timeout=timeout)


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    op_timeout: float,
    inbox: Any,
    outbox: Any,
) -> None:
    """Join the group, then run jobs until told to stop (``None``) or a job raises."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # workers share the machine's cores with each other
    loopback = _loopback_interface()
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    timeout = datetime.timedelta(seconds=op_timeout)
    try:
        store = _tcp_store(port, timeout)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
    except BaseException as exc:
        outbox.put(("init", rank, False, _error_text(exc)))
        return
    outbox.put(("init", rank, True, pickle.dumps(None)))
    try:
        while True:
            message = inbox.get()
            if message is None:
                break
            job_id, job, payload = message
            try:
                value = job(rank, world_size, pickle.loads(payload))
            except BaseException as exc:
                outbox.put((job_id, rank, False, _error_text(exc)))
                break  # the group is out of step: leave, so peers fail fast
            outbox.put((job_id, rank, True, pickle.dumps(value)))
    finally:
        dist.destroy_process_group()


def _error_text(exc: BaseException) -> str:
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return f"{type(exc).__name__}: {exc}\n{trace}"


#: What a forkserver imports once, before it forks the workers: each worker then starts with
#: torch already imported instead of importing it itself (seconds of CPU per rank).
_PRELOAD = ("torch", "torch.distributed", "robustness.process_group")
#: Modules that define jobs (:func:`job_module`), preloaded beside :data:`_PRELOAD`.
_JOB_MODULES: list[str] = []


def job_module(name: str) -> None:
    """Declare that module ``name`` defines jobs: the forkserver imports it once for all ranks.

    A job is pickled by reference, so each rank imports the job's module when it unpickles its
    first job: the contract's job modules bring Hypothesis, pytest and the harness (0.2 to
    0.7 s of CPU per rank, 4.7 s in the ranks of a dev gate). Call it at import time
    (``job_module(__name__)``); it counts for a forkserver not started yet (one serves every
    pool of the process), and a module not declared is still imported by the ranks.
    """
    if name not in _JOB_MODULES:
        _JOB_MODULES.append(name)


_START_METHOD_ENV = "ROBUSTNESS_START_METHOD"


def _start_context() -> Any:
    """The multiprocessing context that starts the workers: a forkserver with torch preloaded.

    A forkserver forks each worker from one clean process that imported torch once, so a pool of
    ``n`` ranks costs one torch import instead of ``n``. The server holds no threads, locks or
    CUDA state of the caller (it is started fresh, not forked from the caller), so forking from
    it is as safe as ``spawn``. Where forkserver is not available (Windows), or where
    ``$ROBUSTNESS_START_METHOD=spawn`` asks for it, workers are spawned.
    """
    method = os.environ.get(_START_METHOD_ENV) or (
        "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    )
    if method not in ("forkserver", "spawn"):
        raise HarnessUsageError(f"${_START_METHOD_ENV}={method!r} must be 'forkserver' or 'spawn'")
    context = mp.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([*_PRELOAD, *_JOB_MODULES])
    return context


class ProcessGroupPool:
    """``world_size`` workers in one process group, running jobs on every rank.

    Args:
        world_size: number of ranks (>= 1).
        backend: ``"gloo"`` (cpu) or ``"nccl"`` (one GPU per rank).
        init_timeout: seconds to spawn the workers and join the group.
        op_timeout: the group's timeout for each collective, in seconds.

    Raises:
        HarnessUsageError: on bad arguments, or if the group cannot be started in time (the
            message carries each failing worker's error).
    """

    def __init__(
        self,
        world_size: int,
        *,
        backend: str = "gloo",
        init_timeout: float = _INIT_TIMEOUT,
        op_timeout: float = _OP_TIMEOUT,
    ) -> None:

        if world_size < 1:
            raise HarnessUsageError(f"world_size must be >= 1, got world_size={world_size}")
        if backend not in BACKENDS.values():
            raise HarnessUsageError(
                f"backend must be one of {', '.join(BACKENDS.values())}, got {backend!r}"
            )
        self.world_size = world_size
        self.backend = backend
        self.alive = False
        self._jobs = 0
        timeout = datetime.timedelta(seconds=init_timeout)
        # The calling process serves the store; port 0 lets the OS choose a free port.
        self._store = _tcp_store(0, timeout, serve=True)
        context = _start_context()
        self._outbox: Any = context.Queue()
        self._inboxes: list[Any] = [context.Queue() for _ in range(world_size)]
        self._workers: list[BaseProcess] = [
            context.Process(
                target=_worker,
                args=(r, world_size, self._store.port, backend, op_timeout, inbox, self._outbox),
                name=f"robustness-rank-{r}",
                daemon=True,
            )
            for r, inbox in enumerate(self._inboxes)
        ]
        for worker in self._workers:
            worker.start()
        outcomes = self._collect("init", init_timeout)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            self.close()
            raise HarnessUsageError(
                f"could not start a {backend} process group of {world_size} rank(s) on "
                "loopback:\n" + "\n".join(f"rank {o.rank}: {o.error}" for o in failed)
            )
        self.alive = True

    def _collect(self, job_id: object, timeout: float) -> list[JobOutcome]:
        """Every rank's outcome of ``job_id``; ranks that died or ran out of time get an error."""
        deadline = time.monotonic() + timeout
        got: dict[int, JobOutcome] = {}
        while len(got) < self.world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                message_id, rank, ok, value = self._outbox.get(timeout=min(left, _POLL))
            except queue.Empty:
                dead = [r for r, w in enumerate(self._workers) if r not in got and not w.is_alive()]
                if dead and len(dead) + len(got) == self.world_size:
                    break
                continue
            if message_id != job_id:
                continue  # a late answer to an earlier job that timed out
            got[rank] = JobOutcome(
                rank, ok, pickle.loads(value) if ok else None, "" if ok else value
            )
        for rank, worker in enumerate(self._workers):
            if rank not in got:
                why = (
                    f"worker exited with code {worker.exitcode} without an answer"
                    if not worker.is_alive()
                    else f"no answer within {timeout:g} s (a rank skipped or repeated a "
                    "collective, or one is stuck)"
                )
                got[rank] = JobOutcome(rank, False, error=why)
        return [got[r] for r in range(self.world_size)]

    def run(
        self, job: Callable[[int, int, Any], Any], payload: Any, *, timeout: float
    ) -> list[JobOutcome]:
        """Run ``job(rank, world_size, payload)`` on every rank; outcomes in rank order.

        ``job`` must be a module-level function (it is pickled by reference) and ``payload``
        picklable. If any rank fails, the pool is closed (a later :func:`shared_pool` starts a
        new one).

        Raises:
            HarnessUsageError: if the pool is closed.
        """
        if not self.alive:
            raise HarnessUsageError("this process group pool is closed; use shared_pool()")
        self._jobs += 1
        job_id = self._jobs
        # Pickled by value up front: tensors then travel as bytes, not as shared memory that
        # would have to outlive the process that sent it.
        data = pickle.dumps(payload)
        for inbox in self._inboxes:
            inbox.put((job_id, job, data))
        outcomes = self._collect(job_id, timeout)
        if not all(o.ok for o in outcomes):
            self.close()
        return outcomes

    def close(self) -> None:
        """Ask every worker to leave the group; terminate those that do not within a grace."""
        self.alive = False
        for worker, inbox in zip(self._workers, self._inboxes, strict=True):
            if worker.is_alive():
                try:
                    inbox.put(None)
                except (OSError, ValueError):
                    pass  # the queue is already closed
        deadline = time.monotonic() + _GRACE
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
        for worker in self._workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(_GRACE)
        for q in (*self._inboxes, self._outbox):
            q.close()
            q.cancel_join_thread()


_POOLS: dict[tuple[int, str], ProcessGroupPool] = {}


def shared_pool(world_size: int, backend: str = "gloo") -> ProcessGroupPool:
    """A live pool of ``world_size`` ranks on ``backend``, started on first use and reused.

    Raises:
        HarnessUsageError: on bad arguments or if the group cannot be started.
    """
    key = (world_size, backend)
    pool = _POOLS.get(key)
    if pool is None or not pool.alive:
        pool = ProcessGroupPool(world_size, backend=backend)
        _POOLS[key] = pool
    return pool


def close_pools() -> None:
    """Close every pool :func:`shared_pool` started (also run at interpreter exit)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.close()


atexit.register(close_pools)
