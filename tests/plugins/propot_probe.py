"""Test plugin: records Propot's initial prototypes on every rank (for the gloo DDP test)."""

from __future__ import annotations

import os

import torch
from fastreid.config import CfgNode as CN
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from fastreid_ext.registry import HOOK_REGISTRY


@HOOK_REGISTRY.register()
class PropotProbeHook(HookBase):
    """Runs after ``PropotInitialPrototypeHook`` (listed after it in TRAINER.HOOKS, so its
    ``before_train`` comes second) and saves
    ``propot_probe_rank{r}.pt``: the initial prototypes, the hook's ``source``, and on rank 0 the
    encoder weights they were computed with."""

    def __init__(self, cfg: CN, trainer) -> None:
        self.output_dir = cfg.OUTPUT_DIR

    def before_train(self) -> None:
        model = self.trainer.model
        model = model.module if hasattr(model, "module") else model
        init_hook = next(
            h for h in self.trainer._hooks if type(h).__name__ == "PropotInitialPrototypeHook"
        )
        record = {
            "initial_v": model.prototypes.initial_v.detach().cpu().clone(),
            "initial_t": model.prototypes.initial_t.detach().cpu().clone(),
            "source": init_hook.source,
            "world_size": comm.get_world_size(),
        }
        if comm.is_main_process():
            record["backbone"] = {
                k: v.cpu().clone() for k, v in model.backbone.state_dict().items()
            }
        os.makedirs(self.output_dir, exist_ok=True)
        torch.save(record, os.path.join(self.output_dir, f"propot_probe_rank{comm.get_rank()}.pt"))
