"""CSDN's phase plan (three phases on one epoch axis), their optimizers and LR schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from fastreid.config import CfgNode
from torch import nn

from fastreid_ext.config import check_range
from fastreid_ext.solver import LRSchedule, build_lr_schedule, build_optimizer

from .modeling.meta_arch import PHASES

__all__ = ["PhasePlan", "TimmCosineSchedule", "PhaseSchedule", "build_phase_optimizer"]


class PhasePlan:
    """Epochs of the phases (prompt, fusion, image) laid end to end on one epoch axis.

    Phase 1 runs ``MODEL.CSDN.PHASE1.EPOCHS``, phase 2 ``PHASE2.EPOCHS`` (0 without SII), phase
    3 ``SOLVER.MAX_EPOCH`` (>= 1); a phase with 0 epochs is skipped.
    """

    def __init__(self, cfg: CfgNode) -> None:
        c = cfg.MODEL.CSDN
        e1 = int(check_range("MODEL.CSDN.PHASE1.EPOCHS", c.PHASE1.EPOCHS, 0))
        e2 = int(check_range("MODEL.CSDN.PHASE2.EPOCHS", c.PHASE2.EPOCHS, 0))
        e2 = e2 if c.SII.ENABLED else 0
        e3 = int(check_range("SOLVER.MAX_EPOCH", cfg.SOLVER.MAX_EPOCH, 1))
        self.epochs = (e1, e2, e3)
        self.starts = (0, e1, e1 + e2)
        self.total = e1 + e2 + e3

    def phase_of(self, epoch: int) -> int:
        """Index (0 prompt, 1 fusion, 2 image) of the phase that trains ``epoch`` (0-based)."""
        for k in (2, 1, 0):
            if self.epochs[k] and epoch >= self.starts[k]:
                return k
        return 2

    def is_eval_epoch(self, epoch: int, period: int) -> bool:
        """Whether the model is evaluated after ``epoch`` (0-based): every ``period`` phase-3
        epochs, counted from the phase-3 start, and after the last epoch (only then when
        ``period <= 0``); never in phases 1-2."""
        n = epoch + 1 - self.starts[2]
        return epoch + 1 >= self.total or (period > 0 and n > 0 and n % period == 0)


@dataclass(frozen=True)
class TimmCosineSchedule:
    """LR factor of timm's ``CosineLRScheduler`` (t_mul 1, one cycle, no warm-up prefix) as
    CSDN's phases 1-2 use it, stepped with the epoch t from 0: ``warmup_lr_init + t * (base -
    warmup_lr_init) / warmup`` for t < warmup, then ``lr_min + (base - lr_min) (1 + cos(pi t /
    t_initial)) / 2``; ``lr_min`` from t_initial on. Divided by ``base_lr``."""

    base_lr: float
    t_initial: int
    warmup: int = 5
    warmup_lr_init: float = 1e-5
    lr_min: float = 1e-6

    def factor(self, t: float) -> float:
        if t < self.warmup:
            lr = self.warmup_lr_init + t * (self.base_lr - self.warmup_lr_init) / self.warmup
        elif t >= self.t_initial:
            lr = self.lr_min
        else:
            cos = 1 + math.cos(math.pi * t / self.t_initial)
            lr = self.lr_min + 0.5 * (self.base_lr - self.lr_min) * cos
        return lr / self.base_lr


class PhaseSchedule:
    """``LRScheduleHook``-compatible schedule over the whole run: each phase's own schedule,
    evaluated at the epoch relative to the phase start (phase 3: ``SOLVER`` keys)."""

    def __init__(self, cfg: CfgNode, plan: PhasePlan) -> None:
        c = cfg.MODEL.CSDN
        self.plan = plan
        self.image: LRSchedule = build_lr_schedule(cfg)
        self.phases = [
            TimmCosineSchedule(
                node.BASE_LR, node.EPOCHS, node.WARMUP_EPOCHS, node.WARMUP_LR_INIT, node.ETA_MIN_LR
            )
            for node in (c.PHASE1, c.PHASE2)
        ] + [self.image]

    def progress(self, epoch: int, iter_in_epoch: int, iters_per_epoch: int) -> float:
        return self.image.progress(epoch, iter_in_epoch, iters_per_epoch)

    def factor(self, progress: float) -> float:
        k = self.plan.phase_of(int(progress))
        return self.phases[k].factor(progress - self.plan.starts[k])


def build_phase_optimizer(cfg: CfgNode, module: nn.Module, phase: int) -> torch.optim.Optimizer:
    """Freeze all but the modules of ``phase`` (0 prompt, 1 fusion, 2 image) and build its
    optimizer: Adam with one group (``MODEL.CSDN.PHASE1`` / ``PHASE2``) for phases 1-2,
    ``fastreid_ext.solver.build_optimizer`` (``SOLVER``) for phase 3. ``module``: the CSDN model
    (not DDP-wrapped)."""
    module.set_trainable(PHASES[phase])
    if phase == 2:
        return build_optimizer(cfg, module)
    node = (cfg.MODEL.CSDN.PHASE1, cfg.MODEL.CSDN.PHASE2)[phase]
    named = list(module.phase_parameters(PHASES[phase]))
    if not named:
        raise ValueError(f"CSDN phase '{PHASES[phase]}' has no parameter to train")
    group = {
        "params": [p for _, p in named],
        "param_names": [n for n, _ in named],
        "lr": node.BASE_LR,
        "base_lr": node.BASE_LR,
        "weight_decay": node.WEIGHT_DECAY,
        "group_name": PHASES[phase],
    }
    return torch.optim.Adam([group], lr=node.BASE_LR)
