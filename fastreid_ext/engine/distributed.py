"""The distributed patterns every trainer and hook shares: one DDP wrapper, one unwrap, one
"compute on the main process, then share" with the same error handling everywhere."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from fastreid.config import CfgNode
from fastreid.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["create_ddp_model", "unwrap_model", "run_on_main_and_share"]

_HAS_FORWARD_SYNC = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def create_ddp_model(
    model: nn.Module, cfg: CfgNode, broadcast_buffers: Optional[bool] = None
) -> nn.Module:
    """Wrap ``model`` in DDP when the world has more than one process (``model`` otherwise).

    ``device_ids`` is the local rank for CUDA modules and ``None`` for CPU modules (gloo);
    ``broadcast_buffers`` (rank 0's buffers sent to every rank before each forward) defaults to
    ``TRAINER.BROADCAST_BUFFERS`` and
    ``find_unused_parameters`` is ``TRAINER.FIND_UNUSED_PARAMETERS``. An already wrapped model is
    unwrapped first, so a trainer may re-wrap after changing which parameters train.
    """
    module = unwrap_model(model)
    if comm.get_world_size() <= 1:
        return module
    param = next(module.parameters(), None)
    on_cuda = param is not None and param.device.type == "cuda"
    if broadcast_buffers is None:
        broadcast_buffers = bool(cfg.TRAINER.BROADCAST_BUFFERS)
    # torch >= 2.13 renamed the per-forward buffer broadcast; buffers are synced at init either way
    buffers_kw = "forward_sync_buffers" if _HAS_FORWARD_SYNC else "broadcast_buffers"
    return DistributedDataParallel(
        module,
        device_ids=[comm.get_local_rank()] if on_cuda else None,
        find_unused_parameters=bool(cfg.TRAINER.FIND_UNUSED_PARAMETERS),
        **{buffers_kw: bool(broadcast_buffers)},
    )


def run_on_main_and_share(fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` on the main process; its (picklable) result is returned on every rank.

    If ``fn`` raises on the main process, the error is shared as well and raised on **every**
    rank (the main process re-raises the original exception, the others a ``RuntimeError``
    naming ``what`` and the message), so no rank is left waiting in a collective.
    """
    payload, error = None, None
    if comm.is_main_process():
        try:
            payload = ("ok", fn())
        except Exception as exc:  # re-raised below, on every rank
            error = exc
            payload = ("error", f"{type(exc).__name__}: {exc}")
    if comm.get_world_size() > 1:
        payload = comm.all_gather(payload)[0]
    if error is not None:
        raise error
    if payload[0] == "error":
        raise RuntimeError(f"{what} failed on the main process: {payload[1]}")
    return payload[1]
