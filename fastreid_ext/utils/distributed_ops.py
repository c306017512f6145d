"""Tensor collectives for losses and buffers under DDP: row all-gather (with or without gradient)
and a one-off broadcast of a module's buffers.

Every function is the identity (or a no-op) when ``torch.distributed`` is not initialised or the
world has one process, so single-process code paths stay bit-identical.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["distributed_world_size", "all_gather_rows", "broadcast_module_buffers"]


def distributed_world_size() -> int:
    """Processes in the default group (1 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _gather_list(x: torch.Tensor) -> List[torch.Tensor]:
    """Every rank's ``x`` (same shape and dtype on every rank), in rank order."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return parts


class _AllGatherRows(torch.autograd.Function):
    """``[n, ...]`` per rank -> ``[W * n, ...]`` (rank order) with a gradient.

    Backward: the incoming gradient ``[W * n, ...]`` is summed over ranks (all-reduce) and this
    rank's rows are returned, i.e. the gradient of ``sum_r loss_r`` (every rank's loss) with
    respect to this rank's rows. When every rank computes the same loss of the gathered tensor,
    this is ``W`` times the rank's local gradient, and DDP's averaging over the ``W`` ranks then
    gives exactly the single-process gradient of that loss over the whole global batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(_gather_list(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_rows(x: torch.Tensor, blocks: int = 1) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, keeping the gradient of this rank's rows.

    Args:
        x: ``[blocks * n, ...]``, the same shape and dtype on every rank (equal per-rank batches).
        blocks: ``x`` is ``blocks`` consecutive blocks of ``n`` rows (e.g. view A, view B,
            infrared of n pairs); the result keeps that block-major layout over the global batch:
            block 0 of ranks 0..W-1, then block 1 of ranks 0..W-1, ... -- the row order a single
            process gets for the concatenated per-rank batches.

    Returns:
        ``[W * blocks * n, ...]``; ``x`` itself when the world has one process. If ``x`` requires
        a gradient (and grad mode is on), gradients flow back to this rank's rows summed over
        every rank's use of the result (see :class:`_AllGatherRows`); otherwise the gather is a
        plain collective.
    """
    world = distributed_world_size()
    if world == 1:
        return x
    if x.shape[0] % blocks != 0:
        raise ValueError(f"all_gather_rows: {x.shape[0]} rows are not {blocks} equal blocks")
    if x.requires_grad and torch.is_grad_enabled():
        out = _AllGatherRows.apply(x)
    else:
        out = torch.cat(_gather_list(x.detach()))
    if blocks == 1:
        return out
    n = x.shape[0] // blocks
    # [W, blocks, n, ...] -> [blocks, W, n, ...]
    out = out.reshape(world, blocks, n, *x.shape[1:]).transpose(0, 1)
    return out.reshape(world * blocks * n, *x.shape[1:])


def broadcast_module_buffers(module: nn.Module, src: int = 0) -> int:
    """Copy rank ``src``'s buffers (persistent or not) into every rank's ``module``, in place.

    One broadcast per (device, dtype) group of flattened buffers (boolean buffers travel as
    uint8). A no-op in a one-process world. Returns the number of buffers synchronised.
    """
    if distributed_world_size() == 1:
        return 0
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = {}
    for buf in module.buffers():
        groups.setdefault((buf.device, buf.dtype), []).append(buf)
    count = 0
    for (_, dtype), bufs in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        wire = [b.to(torch.uint8) if dtype == torch.bool else b for b in bufs]
        flat = _flatten_dense_tensors([w.detach() for w in wire])
        dist.broadcast(flat, src)
        for buf, synced in zip(bufs, _unflatten_dense_tensors(flat, wire)):
            with torch.no_grad():
                buf.copy_(synced.to(dtype) if dtype == torch.bool else synced)
        count += len(bufs)
    return count
