"""Test plugin: Propot's initial-prototype hook that also records, on every rank, what it
produced (for the gloo DDP tests)."""

from __future__ import annotations

import os

import torch
from fastreid.config import CfgNode as CN
from fastreid.utils import comm

from fastreid_ext.engine.distributed import unwrap_model
from fastreid_ext.registry import HOOK_REGISTRY
from propot.hooks import PropotInitialPrototypeHook


@HOOK_REGISTRY.register()
class PropotProbeHook(PropotInitialPrototypeHook):
    """``PropotInitialPrototypeHook`` (listed instead of it in TRAINER.HOOKS), then saves
    ``propot_probe_rank{r}.pt``: the initial prototypes [N, d], the hook's ``source``, the world
    size and, on rank 0, the encoder weights they were computed with."""

    def __init__(self, cfg: CN, trainer) -> None:
        super().__init__(cfg, trainer)
        self.output_dir = cfg.OUTPUT_DIR

    def before_train(self) -> None:
        super().before_train()
        model = unwrap_model(self.trainer.model)
        record = {
            "initial_v": model.prototypes.initial_v.detach().cpu().clone(),
            "initial_t": model.prototypes.initial_t.detach().cpu().clone(),
            "source": self.source,
            "world_size": comm.get_world_size(),
        }
        if comm.is_main_process():
            record["backbone"] = {
                k: v.cpu().clone() for k, v in model.backbone.state_dict().items()
            }
        os.makedirs(self.output_dir, exist_ok=True)
        torch.save(record, os.path.join(self.output_dir, f"propot_probe_rank{comm.get_rank()}.pt"))
