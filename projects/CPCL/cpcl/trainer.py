"""CPCLTrainer: the shared trainer with a weakly supervised training set (no identity labels)."""

from __future__ import annotations

from typing import Any, List

import torch
from fastreid.config import CfgNode

from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine.distributed import unwrap_model
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
            raise ConfigValueError(
                "TRAINER.HOOKS",
                list(self.cfg.TRAINER.HOOKS),
                "a list with 'CPCLPseudoLabelHook' (it computes the pseudo labels and memories)",
            )
        return super().build_hooks()

    def resume_or_load(self, resume: bool = True) -> None:
        """As :meth:`ExtTrainer.resume_or_load`, after giving the model's memories the
        ``[K, D]`` shapes stored in the checkpoint to resume from: the number of clusters changes
        with every clustering, and fast-reid's loader skips tensors whose shape differs from the
        model's."""
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            # memory-mapped: only the shapes are read here, the loader reads the tensors
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = ckpt.get("model", ckpt)
            prefix = "module.pmm." if any(k.startswith("module.") for k in state) else "pmm."
            unwrap_model(self.model).pmm.resize_like(state, prefix)
        super().resume_or_load(resume)
