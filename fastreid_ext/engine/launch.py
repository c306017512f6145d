"""Device-aware replacement for fast-reid's ``launch``: NCCL on GPUs, gloo on CPUs, torchrun aware.

A failure on any rank ends the whole job within a bounded time (``abort_timeout``, see
:mod:`fastreid_ext.engine.abort`): the failing rank prints its traceback and exits without a
barrier, the others are ended by their abort watchdogs (and, for ``mp.spawn``, by the launcher).
"""

from __future__ import annotations

import logging
import os
import signal
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.utils import comm

from .abort import EXIT_FAILED, EXIT_PEER_FAILED, AbortTiming, AbortWatchdog, fail_rank
from .abort import resolve_abort_timeout as resolve_abort_timeout
from .run_info import finish_run_record

__all__ = [
    "launch",
    "default_backend",
    "launched_by_torchrun",
    "resolve_abort_timeout",
    "RankFailedError",
    "DEFAULT_TIMEOUT",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
_LOCAL_HOST = "127.0.0.1"


class RankFailedError(RuntimeError):
    """A rank of a job started by :func:`launch` exited abnormally (its traceback is above)."""


def default_backend(num_processes_per_machine: int) -> str:
    """``"nccl"`` when every local process can own a CUDA device, else ``"gloo"``."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= num_processes_per_machine:
        return "nccl"
    return "gloo"


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (or any launcher setting the env:// variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def _set_local_group(world_size: int, procs_per_machine: int, machine_rank: int) -> None:
    """Create one process group per machine on every rank and register ours with fast-reid's comm."""
    num_machines = world_size // procs_per_machine
    for i in range(num_machines):
        ranks = list(range(i * procs_per_machine, (i + 1) * procs_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _host_local_store(world_size: int, timeout: timedelta) -> Tuple[dist.TCPStore, str]:
    """A TCPStore server in the launcher on a port the OS picks, and its ``tcp://`` URL.

    The store binds port 0 itself, so no other process can take the port between choosing and
    binding it (finding a free port, closing it and binding it again is a race). It also outlives
    every rank, so the ranks can always read each other's abort records.
    """
    store = dist.TCPStore(
        _LOCAL_HOST, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False
    )
    return store, f"tcp://{_LOCAL_HOST}:{store.port}"


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    backend: Optional[str] = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    abort_timeout: Optional[float] = None,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``.

    Same signature as ``fastreid.engine.launch`` plus ``backend`` (``None``: NCCL when CUDA devices
    are available for every local process, gloo otherwise -- so ``--num-gpus 2`` on a CPU machine
    trains with two gloo processes), ``timeout`` (of collectives) and ``abort_timeout`` (seconds
    within which every rank ends after one fails; ``None``: ``$FASTREID_EXT_ABORT_TIMEOUT``, else
    30). Inside a ``torchrun`` process the process group is initialised from the environment and
    ``main_func`` is called directly. ``dist_url="auto"`` (or ``None``) hosts the rendezvous store
    in this process on a port the OS picks (single machine only).

    Raises :class:`RankFailedError` when a spawned rank exits abnormally; a rank that raised has
    printed its traceback (tagged ``[rank N]``) to stderr and to its log file.
    """
    timing = AbortTiming(resolve_abort_timeout(abort_timeout))
    if launched_by_torchrun():
        local_world = _init_from_env(backend, timeout)
        _run_distributed(main_func, args, timing, local_world)
        return

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        _run_single(main_func, args)
        return
    store = None
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' is only supported for single-machine jobs")
        store, dist_url = _host_local_store(world_size, timeout)
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs; prefer tcp://")
    backend = backend or default_backend(num_gpus_per_machine)
    context = mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            store is not None,
            args,
            backend,
            timeout,
            timing,
        ),
        join=False,
        daemon=False,
        start_method="spawn",
    )
    try:
        # The grace period lets the other ranks' watchdogs end them (logging why) before the
        # remaining processes get SIGTERM, then SIGKILL.
        while not context.join(grace_period=timing.spawn_grace):
            pass
    except mp.ProcessExitedException as exc:
        raise RankFailedError(_describe_exit(exc, machine_rank * num_gpus_per_machine)) from None
    finally:
        del store  # keep the store served until every rank has ended


def _describe_exit(exc: mp.ProcessExitedException, first_rank: int) -> str:
    rank = first_rank + exc.error_index
    if exc.exit_code == EXIT_FAILED:
        why = f"failed (exit code {EXIT_FAILED}); its traceback is printed above"
    elif exc.exit_code == EXIT_PEER_FAILED:
        why = "stopped because another rank failed (see above)"
    elif exc.exit_code is not None and exc.exit_code < 0:
        name = (
            signal.Signals(-exc.exit_code).name if -exc.exit_code in signal.valid_signals() else ""
        )
        why = (
            f"was killed by signal {name or -exc.exit_code} (out of memory, or killed externally?)"
        )
    else:
        why = f"exited with code {exc.exit_code}"
    return f"Rank {rank} (pid {exc.error_pid}) {why}."


def _run_single(main_func: Callable[..., Any], args: Sequence[Any]) -> None:
    """One process: run ``main_func`` and close the run record with how it ended."""
    try:
        main_func(*args)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        finish_run_record(status, f"{type(exc).__name__}: {exc}")
        raise
    finish_run_record("completed")


def _run_distributed(
    main_func: Callable[..., Any], args: Sequence[Any], timing: AbortTiming, procs_per_machine: int
) -> None:
    """Run ``main_func`` on this rank of an initialised process group, guarded by the watchdog.

    Success: close the run record, synchronise (a rank failing meanwhile is still caught), stop
    the watchdog, destroy the group. Any exception (``SystemExit`` with a non-zero code included):
    :func:`fail_rank`, which never returns and never synchronises.
    """
    rank = dist.get_rank()
    watchdog = AbortWatchdog.for_default_group(timing, on_exit=finish_run_record)
    previous_sigterm = None
    if watchdog is not None:
        watchdog.start()
        previous_sigterm = watchdog.install_sigterm_handler()
    try:
        comm.synchronize()
        _set_local_group(dist.get_world_size(), procs_per_machine, rank // procs_per_machine)
        try:
            main_func(*args)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
        finish_run_record("completed")
        comm.synchronize()
    except BaseException as exc:
        fail_rank(exc, rank, watchdog, timing, on_exit=finish_run_record)
    if watchdog is not None:
        watchdog.stop()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    store_in_launcher: bool,
    args: Sequence[Any],
    backend: str,
    timeout: timedelta,
    timing: AbortTiming,
) -> None:
    global_rank = machine_rank * procs_per_machine + local_rank
    if backend == "nccl":
        if procs_per_machine > torch.cuda.device_count():
            raise RuntimeError(
                f"{procs_per_machine} processes per machine but only "
                f"{torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(local_rank)
    init: dict = {"init_method": dist_url}
    if store_in_launcher:
        host, port = dist_url[len("tcp://") :].rsplit(":", 1)
        client = dist.TCPStore(host, int(port), world_size, is_master=False, timeout=timeout)
        init = {"store": client}
    try:
        dist.init_process_group(
            backend=backend, world_size=world_size, rank=global_rank, timeout=timeout, **init
        )
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    _run_distributed(main_func, args, timing, procs_per_machine)


def _init_from_env(backend: Optional[str], timeout: timedelta) -> int:
    """Initialise the default group from torchrun's variables; returns the local world size."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = backend or default_backend(local_world)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    return local_world
