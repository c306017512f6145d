"""A hook that replaces the training set between epochs: loader, iters_per_epoch and max_iter
follow, and the LR schedule stays defined in epochs."""

from __future__ import annotations

import os

from fastreid.engine.train_loop import HookBase

from fastreid_ext.data.text_image import TextImageTrainSet
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.engine.writers import TrainerMetricPrinter
from fastreid_ext.registry import HOOK_REGISTRY

from .conftest import REPO, tiny_opts


@HOOK_REGISTRY.register()
class HalveTrainSetAtEpochOneHook(HookBase):
    """At the start of epoch 1, keep only the first half of the training pairs."""

    def __init__(self, cfg, trainer) -> None:
        self.steps = {}
        self.lrs = {}

    def before_epoch(self) -> None:
        t = self.trainer
        if t.epoch == 1:
            old = t.train_set
            half = TextImageTrainSet(old.pairs[: len(old) // 2], old.transform, old.tokenizer)
            t.set_train_set(half)

    def after_step(self) -> None:
        t = self.trainer
        self.steps[t.epoch] = self.steps.get(t.epoch, 0) + 1
        self.lrs[t.epoch] = t.optimizer.param_groups[0]["lr"]


def test_hook_changes_training_set_between_epochs(synthetic_root, tmp_path):
    out = str(tmp_path / "dyn")
    os.makedirs(out)
    cfg = build_cfg(
        str(REPO / "configs" / "Baseline" / "demo.yml"),
        tiny_opts(synthetic_root, out, epochs=3)
        + [
            "TRAINER.HOOKS",
            "['HalveTrainSetAtEpochOneHook']",
            "TEST.EVAL_PERIOD",
            "3",
            "DATALOADER.NUM_WORKERS",
            "0",
        ],
    )
    cfg.freeze()
    trainer = ExtTrainer(cfg)
    full = len(trainer.train_set)
    batch = cfg.SOLVER.IMS_PER_BATCH
    assert trainer.iters_per_epoch == full // batch
    hook = next(h for h in trainer._hooks if isinstance(h, HalveTrainSetAtEpochOneHook))
    trainer.train()
    assert len(trainer.train_set) == full // 2
    assert hook.steps == {0: full // batch, 1: (full // 2) // batch, 2: (full // 2) // batch}
    assert trainer.iter == sum(hook.steps.values()) == trainer.max_iter
    # the console printer's ETA follows the new max_iter (fast-reid's fixes it at build time)
    printers = [
        w
        for h in trainer._hooks
        for w in getattr(h, "_writers", [])
        if isinstance(w, TrainerMetricPrinter)
    ]
    assert printers and all(p.max_iter == trainer.max_iter < full // batch * 3 for p in printers)
    # epoch-based LR: warm-up factor 0.1 at epoch 0, full LR at epoch 1 (1 warm-up epoch)
    base = cfg.SOLVER.BASE_LR
    assert abs(hook.lrs[0] - 0.1 * base) < 1e-12 and abs(hook.lrs[1] - base) < 1e-12
