"""An out-of-tree method, as another lab would write it: registered, never edited into ours.

It adds a config namespace, a meta-architecture (the CLIP baseline with a learnable temperature
for the SDM loss) and a hook that records a checksum of the parameters on every rank.
"""

from __future__ import annotations

import json
import os

import torch
from fastreid.config import CfgNode as CN
from fastreid.engine.train_loop import HookBase
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm
from torch import nn

from fastreid_ext.config import register_config
from fastreid_ext.modeling.losses import sdm_loss
from fastreid_ext.modeling.meta_arch import ClipTextImageBaseline
from fastreid_ext.registry import HOOK_REGISTRY


@register_config
def add_mylab_config(cfg: CN) -> None:
    if "MYLAB" in cfg.MODEL:
        return
    cfg.MODEL.MYLAB = CN()
    # Initial SDM temperature (learned).
    cfg.MODEL.MYLAB.INIT_TAU = 0.05


@META_ARCH_REGISTRY.register()
class MyLabLearnedTemperatureT2I(ClipTextImageBaseline):
    """The baseline whose SDM temperature is a learned parameter."""

    def __init__(self, cfg: CN) -> None:
        super().__init__(cfg)
        self.log_tau = nn.Parameter(torch.tensor(float(cfg.MODEL.MYLAB.INIT_TAU)).log())

    def losses(self, feats, batch):
        out = super().losses(feats, batch)
        pids = batch["targets"].to(self.device)
        tau = self.log_tau.exp()
        out["loss_sdm"] = sdm_loss(
            feats["image"].global_feat, feats["text"].global_feat, pids, tau=tau
        )
        return out


@HOOK_REGISTRY.register()
class ParamChecksumHook(HookBase):
    """Writes ``checksum_rank{r}.json`` (sum and abs-sum of every parameter) after training."""

    def __init__(self, cfg: CN, trainer) -> None:
        self.output_dir = cfg.OUTPUT_DIR
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        self.initial = self._checksum(model)

    @staticmethod
    def _checksum(model: nn.Module) -> dict:
        return {
            k: [float(v.double().sum()), float(v.double().abs().sum())]
            for k, v in model.named_parameters()
        }

    def after_train(self) -> None:
        model = self.trainer.model
        model = model.module if hasattr(model, "module") else model
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"checksum_rank{comm.get_rank()}.json")
        with open(path, "w") as f:
            json.dump(
                {
                    "initial": self.initial,
                    "final": self._checksum(model),
                    "world_size": comm.get_world_size(),
                    "ddp": type(self.trainer.model).__name__,
                },
                f,
            )
