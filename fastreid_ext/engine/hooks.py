"""Hooks of the shared trainer: LR schedule, epoch-end checkpoint/evaluation, progress logging."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional

import torch
from fastreid.engine.train_loop import HookBase
from fastreid.evaluation.testing import flatten_results_dict
from fastreid.utils import comm

from ..solver.schedule import LRSchedule

__all__ = ["LRScheduleHook", "EpochEndHook", "ProgressLogger"]

logger = logging.getLogger(__name__)


class LRScheduleHook(HookBase):
    """Sets every group's ``lr = base_lr * schedule.factor(progress)`` before each step.

    The LR is a pure function of (epoch, iteration in epoch), so nothing needs checkpointing and a
    training set that changes size between epochs keeps the schedule defined in epochs.
    """

    def __init__(self, schedule: LRSchedule) -> None:
        self.schedule = schedule

    def before_step(self) -> None:
        t = self.trainer
        it = t.iter - t.epoch_start_iter
        factor = self.schedule.factor(self.schedule.progress(t.epoch, it, t.iters_per_epoch))
        for group in t.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        t.storage.put_scalar("lr", t.optimizer.param_groups[0]["lr"], smoothing_hint=False)


class EpochEndHook(HookBase):
    """Checkpoint, evaluate and record at the end of every epoch, in that order.

    1. ``model_{epoch:04d}.pth`` every ``period`` epochs (and when ``TRAINER.STOP_AFTER_EPOCHS``
       ends the run), ``model_final.pth`` after the last epoch -- written *before* evaluating, so a
       failing evaluation never costs the epoch's weights;
    2. evaluation when ``trainer.is_eval_epoch(epoch)`` (every rank takes part);
    3. the evaluation's metrics are put into the event storage at the epoch's last iteration (the
       trainer's writers put them in ``metrics.json`` and TensorBoard), and ``model_best.pth`` is
       written when the main metric (``metric_key``) improves.

    The best metric, its epoch and checkpoint are this hook's state: they are saved in every
    checkpoint and restored by ``--resume``, so a resumed run never replaces ``model_best.pth`` with
    a worse model. Each checkpoint holds ``epoch`` and ``iteration`` (the next one to run).
    """

    def __init__(self, checkpointer, period: int, metric_key: str) -> None:
        self.checkpointer = checkpointer
        self.period = max(1, int(period))
        self.metric_key = metric_key
        self.best: Dict[str, Any] = {}
        self.last_results: Optional[Dict[str, Any]] = None

    # checkpointed state ---------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))

    @property
    def best_metric(self) -> float:
        return float(self.best.get("metric", float("-inf")))

    # epoch end ------------------------------------------------------------------------------
    def _extra(self) -> Dict[str, int]:
        return {"epoch": int(self.trainer.epoch), "iteration": int(self.trainer.iter)}

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = t.epoch
        if epoch + 1 >= t.max_epoch:
            self.checkpointer.save("model_final", **self._extra())
        elif (epoch + 1) % self.period == 0 or t.stops_after_epoch():
            self.checkpointer.save(f"model_{epoch:04d}", **self._extra())
        if t.is_eval_epoch(epoch):
            self._evaluate(epoch)

    def _evaluate(self, epoch: int) -> None:
        t = self.trainer
        results = t.evaluate()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if results:
            flat = {k: float(v) for k, v in flatten_results_dict(results).items()}
            self.last_results = dict(results)
            t.storage.put_scalars(**flat, smoothing_hint=False)
            metric = flat.get(self.metric_key)
            if metric is not None and metric > self.best_metric:
                self.best = {
                    "metric": metric,
                    "metric_key": self.metric_key,
                    "epoch": int(epoch),
                    "iteration": int(t.iter),
                    "checkpoint": "model_best.pth",
                    "results": flat,
                }
                self.checkpointer.save("model_best", metric=metric, **self._extra())
        # ranks finish evaluating at different times: start the next epoch together
        comm.synchronize()


class ProgressLogger(HookBase):
    """Logs epoch boundaries and wall time per epoch (rank 0)."""

    def before_epoch(self) -> None:
        self._start = time.perf_counter()

    def after_epoch(self) -> None:
        if comm.is_main_process():
            t = self.trainer
            logger.info(
                "Epoch %d/%d done: %d iterations in %.1f s",
                t.epoch + 1,
                t.max_epoch,
                t.iters_per_epoch,
                time.perf_counter() - self._start,
            )
