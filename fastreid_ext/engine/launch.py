"""Device-aware replacement for fast-reid's ``launch``: NCCL on GPUs, gloo on CPUs, torchrun aware."""

from __future__ import annotations

import importlib
import logging
import os
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.utils import comm

__all__ = ["launch", "default_backend", "launched_by_torchrun", "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def default_backend(num_processes_per_machine: int) -> str:
    """``"nccl"`` when every local process can own a CUDA device, else ``"gloo"``."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= num_processes_per_machine:
        return "nccl"
    return "gloo"


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (or any launcher setting the env:// variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def _find_free_port() -> int:
    return importlib.import_module("fastreid.engine.launch")._find_free_port()


def _set_local_group(world_size: int, procs_per_machine: int, machine_rank: int) -> None:
    """Create one process group per machine on every rank and register ours with fast-reid's comm."""
    num_machines = world_size // procs_per_machine
    for i in range(num_machines):
        ranks = list(range(i * procs_per_machine, (i + 1) * procs_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    backend: Optional[str] = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``.

    Same signature as ``fastreid.engine.launch`` plus ``backend`` (``None``: NCCL when CUDA devices
    are available for every local process, gloo otherwise -- so ``--num-gpus 2`` on a CPU machine
    trains with two gloo processes) and ``timeout``. Inside a ``torchrun`` process the process
    group is initialised from the environment and ``main_func`` is called directly.
    ``dist_url="auto"`` picks a free local port (single machine only).
    """
    if launched_by_torchrun():
        _init_from_env(backend, timeout)
        try:
            main_func(*args)
        finally:
            _destroy()
        return

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' is only supported for single-machine jobs")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs; prefer tcp://")
    backend = backend or default_backend(num_gpus_per_machine)
    mp.spawn(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            args,
            backend,
            timeout,
        ),
        daemon=False,
    )


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    backend: str,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * procs_per_machine + local_rank
    if backend == "nccl":
        if procs_per_machine > torch.cuda.device_count():
            raise RuntimeError(
                f"{procs_per_machine} processes per machine but only "
                f"{torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend=backend,
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    comm.synchronize()
    _set_local_group(world_size, procs_per_machine, machine_rank)
    try:
        main_func(*args)
    finally:
        _destroy()


def _init_from_env(backend: Optional[str], timeout: timedelta) -> None:
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = backend or default_backend(local_world)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    comm.synchronize()
    _set_local_group(world_size, local_world, rank // local_world)


def _destroy() -> None:
    if dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None
