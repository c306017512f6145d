"""One optimisation step with optional mixed precision and gradient clipping.

The step puts its losses into the event storage without a per-iteration host synchronisation:
the detached loss tensors of each iteration are kept on the device and copied to the host in one
transfer when ``flush_at(iteration)`` says so (the iterations the periodic writers write at, see
:func:`writer_flush_schedule`); they are then put into the storage *at the iteration they were
computed at*, so the logged values and iterations are identical to a per-iteration copy.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from fastreid.engine.train_loop import SimpleTrainer
from fastreid.utils import comm
from fastreid.utils.events import get_event_storage
from torch import nn

__all__ = ["StepRunner", "resolve_amp_dtype", "writer_flush_schedule"]


def resolve_amp_dtype(enabled: bool, dtype: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or ``None`` when AMP is off (always off on CPU)."""
    if not enabled or device.type != "cuda":
        return None
    if dtype not in ("bf16", "fp16"):
        raise KeyError(f"SOLVER.AMP.DTYPE must be 'bf16' or 'fp16', got '{dtype}'")
    return torch.bfloat16 if dtype == "bf16" else torch.float16


def writer_flush_schedule(trainer: Any, period: int) -> Callable[[int], bool]:
    """``flush_at`` for a trainer whose ``PeriodicWriter`` writes every ``period`` iterations:
    true at those iterations, at the last iteration of the run (``trainer.max_iter``) and at the
    last iteration of every epoch (``trainer.epoch_start_iter + trainer.iters_per_epoch``), so the
    writers and the epoch-end hooks see every loss of the iterations before them. The trainer's
    attributes are read at every call (a hook may change the epoch length)."""
    period = max(1, int(period))

    def flush_at(iteration: int) -> bool:
        nxt = iteration + 1
        return (
            nxt % period == 0
            or nxt >= trainer.max_iter
            or nxt >= trainer.epoch_start_iter + trainer.iters_per_epoch
        )

    return flush_at


class StepRunner(SimpleTrainer):
    """fast-reid's ``SimpleTrainer`` with device-aware AMP (bf16, or fp16 with a GradScaler),
    gradient clipping by norm and losses logged without a per-iteration host copy (module
    docstring). The data iterator is replaced by the trainer at every epoch.

    ``device_type``: the autocast / GradScaler device (``"cuda"``; ``"cpu"`` runs CPU autocast,
    which the trainer never asks for -- benchmarks use it to exercise the AMP path on CPU).
    ``flush_at``: ``iteration -> bool``, when to copy the pending losses to the host; ``None``
    copies at every iteration.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        amp_dtype: Optional[torch.dtype] = None,
        clip_grad_norm: float = 0.0,
        device_type: str = "cuda",
        flush_at: Optional[Callable[[int], bool]] = None,
    ) -> None:
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter = None
        self.optimizer = optimizer
        self.param_wrapper = None
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        fp16 = amp_dtype == torch.float16
        self.grad_scaler = torch.amp.GradScaler(device_type) if fp16 else None
        self.clip_grad_norm = clip_grad_norm
        self.flush_at = flush_at
        self.iter = 0
        # (iteration, loss names, detached losses [len(names)] on the device, data time in s)
        self._pending: List[Tuple[int, Tuple[str, ...], torch.Tensor, float]] = []
        self._hooks = []

    def reset_data_iterator(self, data_loader: Optional[Iterable] = None) -> None:
        if data_loader is not None:
            self.data_loader = data_loader
        self._data_loader_iter = iter(self.data_loader)

    def run_step(self) -> None:
        assert self.model.training, "[StepRunner] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        ctx: Any = (
            torch.autocast(self.device_type, dtype=self.amp_dtype)
            if self.amp_dtype
            else nullcontext()
        )
        with ctx:
            loss_dict = self.model(data)
        losses = sum(v.float() for v in loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self._write_metrics(loss_dict, data_time)
        if self.clip_grad_norm > 0:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    # ------------------------------------------------------------------ metrics
    def _write_metrics(self, loss_dict: Dict[str, torch.Tensor], data_time: float) -> None:
        """Keep this iteration's losses (detached, on the device); flush when ``flush_at`` says."""
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
        self._pending.append((int(self.iter), tuple(loss_dict), values, float(data_time)))
        if self.flush_at is None or self.flush_at(int(self.iter)):
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Copy the pending losses to the host (one transfer), gather them over the ranks and put
        them into the storage at their iterations, as fast-reid's ``_write_metrics`` does per
        iteration (``data_time``: the maximum over ranks; losses: the mean over ranks;
        ``total_loss``: their sum). Raises ``FloatingPointError`` naming the first iteration
        whose losses are not finite. Every rank must call it at the same iterations."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        host = torch.cat([p[2] for p in pending]).cpu().tolist()
        records, pos = [], 0
        for it, names, values, data_time in pending:
            n = values.numel()
            metrics = dict(zip(names, host[pos : pos + n]))
            metrics["data_time"] = data_time
            records.append((it, metrics))
            pos += n
        gathered = comm.gather(records)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        current = storage.iter
        try:
            for index, (it, _) in enumerate(records):
                per_rank = [dict(rank_records[index][1]) for rank_records in gathered]
                storage.iter = it
                self._put_iteration(storage, it, per_rank)
        finally:
            storage.iter = current

    @staticmethod
    def _put_iteration(storage, iteration: int, per_rank: List[Dict[str, float]]) -> None:
        data_time = np.max([x.pop("data_time") for x in per_rank])
        storage.put_scalar("data_time", data_time)
        metrics = {k: np.mean([x[k] for x in per_rank]) for k in per_rank[0].keys()}
        total = sum(metrics.values())
        if not np.isfinite(total):
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={iteration}!\nloss_dict = {metrics}"
            )
        storage.put_scalar("total_loss", total)
        if len(metrics) > 1:
            storage.put_scalars(**metrics)
