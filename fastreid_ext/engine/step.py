"""One optimisation step with optional mixed precision and gradient clipping."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Iterable, Optional

import torch
from fastreid.engine.train_loop import SimpleTrainer
from torch import nn

__all__ = ["StepRunner", "resolve_amp_dtype"]


def resolve_amp_dtype(enabled: bool, dtype: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or ``None`` when AMP is off (always off on CPU)."""
    if not enabled or device.type != "cuda":
        return None
    if dtype not in ("bf16", "fp16"):
        raise KeyError(f"SOLVER.AMP.DTYPE must be 'bf16' or 'fp16', got '{dtype}'")
    return torch.bfloat16 if dtype == "bf16" else torch.float16


class StepRunner(SimpleTrainer):
    """fast-reid's ``SimpleTrainer`` with device-aware AMP (bf16, or fp16 with a GradScaler) and
    gradient clipping by norm. The data iterator is replaced by the trainer at every epoch."""

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        amp_dtype: Optional[torch.dtype] = None,
        clip_grad_norm: float = 0.0,
    ) -> None:
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter = None
        self.optimizer = optimizer
        self.param_wrapper = None
        self.amp_dtype = amp_dtype
        self.grad_scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        self.clip_grad_norm = clip_grad_norm
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

        ctx: Any = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
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
