"""Hooks of the shared trainer: LR schedule, epoch checkpoints, progress logging."""

from __future__ import annotations

import logging
import time

from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm
from fastreid.utils.events import CommonMetricPrinter

from ..solver.schedule import LRSchedule

__all__ = ["LRScheduleHook", "EpochCheckpointer", "ProgressLogger", "TrainerMetricPrinter"]

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


class EpochCheckpointer(HookBase):
    """Saves ``model_{epoch:04d}.pth`` every ``period`` epochs, ``model_best.pth`` when the main
    metric improves and ``model_final.pth`` at the end; each holds ``epoch`` and ``iteration``.

    Must come after the evaluation hook so the epoch's metric is known. Main process only.
    """

    def __init__(self, checkpointer, period: int, max_epoch: int, metric_key: str) -> None:
        self.checkpointer = checkpointer
        self.period = max(1, int(period))
        self.max_epoch = max_epoch
        self.metric_key = metric_key
        self.best = float("-inf")

    def _extra(self) -> dict:
        return {"epoch": int(self.trainer.epoch), "iteration": int(self.trainer.iter)}

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch
        latest = self.trainer.storage.latest()
        if self.metric_key in latest:
            metric = float(latest[self.metric_key][0])
            if metric > self.best:
                self.best = metric
                self.checkpointer.save("model_best", metric=metric, **self._extra())
        if epoch + 1 >= self.max_epoch:
            self.checkpointer.save("model_final", **self._extra())
        elif (epoch + 1) % self.period == 0 or self.trainer.stops_after_epoch():
            self.checkpointer.save(f"model_{epoch:04d}", **self._extra())


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


class TrainerMetricPrinter(CommonMetricPrinter):
    """fast-reid's console metric printer whose ETA follows ``trainer.max_iter``.

    fast-reid's printer fixes ``max_iter`` when it is built; a hook that changes the training set
    (CPCL's pseudo labels) changes ``max_iter`` afterwards, which made the ETA wrong.
    """

    def __init__(self, trainer) -> None:
        super().__init__(trainer.max_iter)
        self._trainer = trainer

    @property
    def _max_iter(self) -> int:
        return int(self._trainer.max_iter)

    @_max_iter.setter
    def _max_iter(self, value: int) -> None:  # set by the parent constructor; trainer wins
        pass
