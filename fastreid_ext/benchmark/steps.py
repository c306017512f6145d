"""The trainer's step against a plain PyTorch loop on the same model, data and optimizer.

``TrainerLoop`` is the per-iteration path of :class:`~fastreid_ext.engine.trainer.ExtTrainer`
without data loading and evaluation: fast-reid's ``TrainerBase`` loop with the trainer's
``StepRunner`` (AMP, GradScaler, gradient clipping, losses logged at the writer period) and the
hooks that run every iteration (``IterationTimer``, ``LRScheduleHook`` over the config's schedule,
``PeriodicWriter`` with the console, ``metrics.json`` and TensorBoard writers). The plain loop is
``autocast -> forward -> sum -> zero_grad -> (scaled) backward -> step``.
"""

from __future__ import annotations

import itertools
import os
import resource
import tempfile
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional

import torch
from fastreid.engine import hooks as fr_hooks
from fastreid.engine.train_loop import TrainerBase

from ..engine.hooks import LRScheduleHook
from ..engine.step import StepRunner, writer_flush_schedule
from ..engine.writers import MetricsJSONWriter, TensorboardWriter, TrainerMetricPrinter
from ..solver import build_lr_schedule
from .floors import sync_device
from .methods import BuiltMethod

__all__ = ["TrainerLoop", "plain_steps", "compare_loops", "AMP_DTYPES", "peak_memory_mib"]

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TrainerLoop(TrainerBase):
    """The trainer's per-iteration path over an endless iterator of in-memory batches."""

    def __init__(
        self, built: BuiltMethod, batches: List[Dict[str, Any]], amp: Optional[torch.dtype],
        output_dir: str, log_period: int = 20,
    ) -> None:  # fmt: skip
        super().__init__()
        cfg = built.cfg
        self.model, self.optimizer = built.model, built.optimizer
        clip = cfg.SOLVER.CLIP_GRADIENTS
        self._trainer = StepRunner(
            built.model,
            None,
            built.optimizer,
            amp_dtype=amp,
            clip_grad_norm=clip.CLIP_VALUE if clip.ENABLED else 0.0,
            device_type=built.model.device.type,
            flush_at=writer_flush_schedule(self, log_period),
        )
        self._trainer.reset_data_iterator(itertools.cycle(batches))
        for group in built.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.epoch_start_iter, self.iters_per_epoch, self.max_iter = 0, 1, 1
        self._schedule = build_lr_schedule(cfg)
        self._output_dir, self._log_period = output_dir, log_period

    def _fresh_hooks(self) -> None:
        """The per-iteration hooks, new for every run (``PeriodicWriter`` closes its writers at
        the end of a run)."""
        os.makedirs(self._output_dir, exist_ok=True)
        writers = [
            TrainerMetricPrinter(self),
            MetricsJSONWriter(f"{self._output_dir}/metrics.json"),
            TensorboardWriter(self._output_dir),
        ]
        self._hooks = []
        self.register_hooks(
            [
                fr_hooks.IterationTimer(),
                LRScheduleHook(self._schedule),
                fr_hooks.PeriodicWriter(writers, self._log_period),
            ]
        )

    @property
    def grad_scaler(self):
        return self._trainer.grad_scaler

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def run(self, steps: int, epoch: int) -> List[float]:
        """Run ``steps`` iterations as epoch ``epoch`` (one epoch of ``steps`` iterations);
        returns the ``total_loss`` of each (read from the event storage after the run)."""
        self.iters_per_epoch = steps
        self.epoch_start_iter = epoch * steps
        self.max_iter = (epoch + 1) * steps
        self._fresh_hooks()
        self.train(epoch, epoch + 1, steps)
        history = self.storage.history("total_loss").values()
        return [float(v) for v, _ in history]


def plain_steps(
    built: BuiltMethod, batches: List[Dict[str, Any]], amp: Optional[torch.dtype], steps: int,
    grad_scaler: Optional[torch.amp.GradScaler] = None, offset: int = 0,
) -> List[float]:  # fmt: skip
    """``steps`` plain training steps over ``batches`` (from ``offset``); the total losses."""
    model, optimizer = built.model, built.optimizer
    device_type = built.model.device.type
    losses = []
    for i in range(steps):
        batch = batches[(offset + i) % len(batches)]
        with torch.autocast(device_type, dtype=amp) if amp else nullcontext():
            loss_dict = model(batch)
        loss = sum(v.float() for v in loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())
    return [float(v) for v in torch.stack(losses).cpu()]


def compare_loops(
    built: BuiltMethod, batches: List[Dict[str, Any]], amp_name: str, steps: int, rounds: int,
    warmup: int = 2,
) -> Dict[str, Any]:  # fmt: skip
    """Alternate ``rounds`` blocks of ``steps`` trainer steps and ``steps`` plain steps on the same
    model and optimizer (the plain block first in even rounds, second in odd ones).

    Returns the throughputs (steps/s over all blocks), their ratio (trainer / plain, target
    >= 0.95), the mean step times, the peak memory (MiB), the loss of every step in run order and
    whether it is finite and falling (mean of the last 5 < mean of the first 5).
    """
    amp = AMP_DTYPES[amp_name]
    device = built.model.device
    with tempfile.TemporaryDirectory() as out:
        loop = TrainerLoop(built, batches, amp, out)
        scaler = loop.grad_scaler
        plain_steps(built, batches, amp, warmup, scaler)
        times = {"trainer": 0.0, "plain": 0.0}
        losses: List[float] = []
        for r in range(rounds):
            order = ("plain", "trainer") if r % 2 == 0 else ("trainer", "plain")
            for mode in order:
                sync_device(device)
                t0 = time.perf_counter()
                if mode == "trainer":
                    block = loop.run(steps, epoch=r)
                else:
                    block = plain_steps(built, batches, amp, steps, scaler, offset=r * steps)
                sync_device(device)
                times[mode] += time.perf_counter() - t0
                losses.extend(block)
    n = steps * rounds
    first, last = losses[:5], losses[-5:]
    finite = all(torch.isfinite(torch.tensor(losses)).tolist())
    return {
        "amp": amp_name,
        "steps_per_mode": n,
        "trainer_step_s": times["trainer"] / n,
        "plain_step_s": times["plain"] / n,
        "throughput_ratio": times["plain"] / times["trainer"],
        "peak_memory_mib": peak_memory_mib(device),
        "loss_first5": sum(first) / len(first),
        "loss_last5": sum(last) / len(last),
        "loss_finite": finite,
        "loss_falling": finite and sum(last) < sum(first),
        "losses": losses,
    }
