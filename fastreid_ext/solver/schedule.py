"""Learning-rate schedules as a pure function of training progress (resumable without state)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from fastreid.config import CfgNode

__all__ = ["LRSchedule", "build_lr_schedule"]


@dataclass(frozen=True)
class LRSchedule:
    """LR factor (multiplying each group's ``base_lr``) at a point of training.

    Linear warm-up from ``warmup_factor`` over ``warmup_epochs``, then either cosine decay to
    ``eta_min_ratio`` at ``max_epoch`` or multi-step decay by ``gamma`` at ``milestones`` (epochs).
    With ``step="epoch"`` the factor is constant within an epoch (IRRA); with ``step="iter"`` the
    fractional epoch is used.
    """

    max_epoch: int
    kind: str = "CosineAnnealingLR"
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.1
    eta_min_ratio: float = 0.0
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    step: str = "epoch"

    def __post_init__(self) -> None:
        if self.kind not in ("CosineAnnealingLR", "MultiStepLR"):
            raise KeyError(
                f"SOLVER.SCHED must be CosineAnnealingLR or MultiStepLR, got {self.kind}"
            )
        if self.step not in ("epoch", "iter"):
            raise KeyError(f"SOLVER.SCHED_STEP must be 'epoch' or 'iter', got {self.step}")

    def progress(self, epoch: int, iter_in_epoch: int, iters_per_epoch: int) -> float:
        if self.step == "epoch":
            return float(epoch)
        return epoch + iter_in_epoch / max(1, iters_per_epoch)

    def factor(self, progress: float) -> float:
        if self.warmup_epochs > 0 and progress < self.warmup_epochs:
            alpha = progress / self.warmup_epochs
            return self.warmup_factor * (1 - alpha) + alpha
        if self.kind == "MultiStepLR":
            return self.gamma ** sum(progress >= m for m in self.milestones)
        span = max(self.max_epoch - self.warmup_epochs, 1e-12)
        t = min(max((progress - self.warmup_epochs) / span, 0.0), 1.0)
        return self.eta_min_ratio + (1 - self.eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_lr_schedule(cfg: CfgNode) -> LRSchedule:
    """Schedule from ``SOLVER.{SCHED, MAX_EPOCH, WARMUP_EPOCHS, WARMUP_FACTOR, ETA_MIN_LR, STEPS,
    GAMMA, SCHED_STEP}`` (``ETA_MIN_LR`` is relative to ``BASE_LR``)."""
    s = cfg.SOLVER
    return LRSchedule(
        max_epoch=s.MAX_EPOCH,
        kind=s.SCHED,
        warmup_epochs=float(s.WARMUP_EPOCHS),
        warmup_factor=s.WARMUP_FACTOR,
        eta_min_ratio=(s.ETA_MIN_LR / s.BASE_LR) if s.BASE_LR > 0 else 0.0,
        milestones=tuple(s.STEPS),
        gamma=s.GAMMA,
        step=s.SCHED_STEP,
    )
