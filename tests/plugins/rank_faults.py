"""Fault injection for the launcher tests: a hook that raises on one chosen rank only.

``PLUGINS ['rank_faults'] TRAINER.HOOKS ['FailOnRankHook'] FAULT_INJECTION.RANK 1`` makes rank 1
raise after its ``FAULT_INJECTION.ITER``-th training step while the other ranks go on into the
next step's DDP all-reduce -- the situation of an unreadable image that only one rank loads. The
hook writes ``fault_rank{r}.json`` (the wall-clock time of the failure) before raising, so a test
can measure how long the other ranks take to end, and logs one line through this package's own
logger (``rank_faults``), which the run must route to ``OUTPUT_DIR/log.txt``.
"""

from __future__ import annotations

import json
import logging
import os
import time

from fastreid.config import CfgNode as CN
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from fastreid_ext.config import register_config
from fastreid_ext.registry import HOOK_REGISTRY

logger = logging.getLogger("rank_faults.hook")

FAILURE_MESSAGE = "injected failure on rank {rank} at iteration {iteration}"


@register_config
def add_rank_faults_config(cfg: CN) -> None:
    if "FAULT_INJECTION" in cfg:
        return
    cfg.FAULT_INJECTION = CN()
    # Global rank that raises (-1: none).
    cfg.FAULT_INJECTION.RANK = -1
    # Training iteration after which it raises.
    cfg.FAULT_INJECTION.ITER = 1


@HOOK_REGISTRY.register()
class FailOnRankHook(HookBase):
    """Raises ``RuntimeError`` on rank ``FAULT_INJECTION.RANK`` after step ``FAULT_INJECTION.ITER``."""

    def __init__(self, cfg: CN, trainer) -> None:
        self.rank = int(cfg.FAULT_INJECTION.RANK)
        self.iteration = int(cfg.FAULT_INJECTION.ITER)
        self.output_dir = cfg.OUTPUT_DIR

    def before_train(self) -> None:
        logger.info("fault injection armed: rank %d, iteration %d", self.rank, self.iteration)

    def after_step(self) -> None:
        rank = comm.get_rank()
        if rank != self.rank or self.trainer.iter < self.iteration:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, f"fault_rank{rank}.json"), "w") as f:
            json.dump({"time": time.time(), "pid": os.getpid()}, f)
        raise RuntimeError(FAILURE_MESSAGE.format(rank=rank, iteration=self.trainer.iter))
