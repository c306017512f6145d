"""``TrainingCurvesHook``: ``OUTPUT_DIR/training_curves.png`` at the end of every training run."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from fastreid.config import CfgNode
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from ..registry import HOOK_REGISTRY
from .curves import CURVES_FILE, write_training_curves

__all__ = ["TrainingCurvesHook"]

logger = logging.getLogger(__name__)


@HOOK_REGISTRY.register()
class TrainingCurvesHook(HookBase):
    """Records the epoch of every evaluation and draws the run's curves after training.

    * ``after_epoch`` puts ``epoch`` (1-based, epochs completed) into the event storage at the
      epoch's last iteration -- the iteration its evaluation metrics are written at -- so that
      ``metrics.json`` gives R1/mAP per epoch. Register the hook after the epoch-end hook and
      before fast-reid's ``PeriodicWriter``, which writes the storage after every epoch.
    * ``after_train`` (main process) draws ``metrics.json`` to ``training_curves.png`` in
      ``output_dir``. It runs after a failed or interrupted training too, and never fails the
      run: a plotting error is logged as a warning.

    ``ExtTrainer.build_hooks`` adds it to every run; it is also in ``HOOK_REGISTRY`` (for a
    trainer of one's own: ``TRAINER.HOOKS ["TrainingCurvesHook"]`` with
    ``PLUGINS ["fastreid_ext.visualization.hooks"]``).
    """

    def __init__(self, cfg: CfgNode, trainer: Optional[Any] = None) -> None:
        self.output_dir = cfg.OUTPUT_DIR

    def after_epoch(self) -> None:
        t = self.trainer
        t.storage.put_scalar("epoch", int(t.epoch) + 1, smoothing_hint=False)

    def after_train(self) -> None:
        if not comm.is_main_process():
            return
        if not os.path.isfile(os.path.join(self.output_dir, "metrics.json")):
            logger.warning("No metrics.json in %s: no %s drawn", self.output_dir, CURVES_FILE)
            return
        try:
            path = write_training_curves(self.output_dir)
        except Exception as e:  # a plot must never fail the run
            logger.warning("Could not draw the training curves of %s: %r", self.output_dir, e)
            return
        logger.info("Training curves: %s", path)
