"""CPCLTrainer: the shared trainer with a weakly supervised training set (no identity labels)."""

from __future__ import annotations

from typing import Any, List

from fastreid.config import CfgNode

from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.registry import TRAINER_REGISTRY

from .data import CPCLTrainSet, build_weak_pairs

__all__ = ["CPCLTrainer"]


@TRAINER_REGISTRY.register()
class CPCLTrainer(ExtTrainer):
    """:class:`ExtTrainer` whose training set is :class:`CPCLTrainSet`: image-caption pairs with
    pseudo labels only (all ``-1`` until :class:`CPCLPseudoLabelHook` clusters at the first epoch
    start). No identity count reaches the model (``MODEL.HEADS.NUM_CLASSES`` stays 0)."""

    @classmethod
    def build_train_set(cls, cfg: CfgNode) -> CPCLTrainSet:
        return cls.text_image_train_set(cfg, build_weak_pairs(cfg), CPCLTrainSet)

    @classmethod
    def num_train_classes(cls, cfg: CfgNode) -> int:
        return 0

    def build_hooks(self) -> List[Any]:
        if "CPCLPseudoLabelHook" not in self.cfg.TRAINER.HOOKS:
            raise ValueError(
                "CPCLTrainer needs TRAINER.HOOKS to include 'CPCLPseudoLabelHook' (pseudo labels "
                f"and memories), got {list(self.cfg.TRAINER.HOOKS)}"
            )
        return super().build_hooks()
