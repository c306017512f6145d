"""The body of ``tools/train_net.py`` run in every process: set up, then train or evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Optional

from fastreid.utils import comm

from ..registry import TRAINER_REGISTRY, lookup
from ..utils.atomic_io import atomic_json_dump
from .checkpoint import load_for_inference
from .setup import setup_cfg
from .trainer import build_trainer

__all__ = ["main"]

logger = logging.getLogger(__name__)


def main(args: argparse.Namespace) -> Optional[Any]:
    """Set up the config; ``--eval-only`` evaluates ``MODEL.WEIGHTS``, otherwise trains
    (``--resume`` continues from the last checkpoint in ``OUTPUT_DIR``)."""
    cfg = setup_cfg(args)
    trainer_cls = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME")
    if args.eval_only:
        cfg = trainer_cls.auto_scale_hyperparams(cfg, trainer_cls.num_train_classes(cfg))
        model = trainer_cls.build_model(cfg)
        load_for_inference(model, cfg.MODEL.WEIGHTS)
        results = trainer_cls.test(cfg, model)
        _save_results(cfg.OUTPUT_DIR, "eval_results.json", results)
        return results
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if results:
        # the last evaluation's metrics at the top level (as before), plus the best one
        results = dict(results, best=trainer.best_record())
    _save_results(cfg.OUTPUT_DIR, "results.json", results)
    return results


def _save_results(output_dir: str, name: str, results: Any) -> None:
    """Write the final metrics (main process) to ``OUTPUT_DIR/name`` for scripts and summaries."""
    if not comm.is_main_process() or not output_dir or not results:
        return
    atomic_json_dump(results, os.path.join(output_dir, name))
    logger.info("Final results (%s): %s", name, json.dumps(results, default=float))
