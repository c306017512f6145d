"""Optimizers with per-parameter-group learning rates and warm-up + cosine / multi-step schedules."""

from .optimizer import build_optimizer, build_param_groups
from .schedule import LRSchedule, build_lr_schedule

__all__ = ["build_optimizer", "build_param_groups", "LRSchedule", "build_lr_schedule"]
