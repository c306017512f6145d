# mylab/mymethod.py
"""MyMethod: the CLIP text-image baseline plus a paired-feature alignment loss.

    loss_align = WEIGHT * ramp * mean_i (1 - cos(v_i, t_i))

v_i, t_i [D]: global image and caption features of training pair i. AlignWarmupHook sets
ramp = min(1, (epoch + 1) / WARMUP_EPOCHS) before every epoch (1 without the hook).
"""

from fastreid.config import CfgNode as CN
from fastreid.engine.train_loop import HookBase
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import Tensor
from torch.nn import functional as F

from fastreid_ext.config import check_range, register_config
from fastreid_ext.engine.distributed import unwrap_model
from fastreid_ext.modeling.meta_arch import ClipTextImageBaseline
from fastreid_ext.registry import HOOK_REGISTRY


@register_config
def add_mymethod_config(cfg: CN) -> None:
    """Add MODEL.MYMETHOD (runs for every config built after this module is imported)."""
    if "MYMETHOD" in cfg.MODEL:
        return
    cfg.MODEL.MYMETHOD = CN()
    # Weight of loss_align; 0 turns it off (the model is then the baseline).
    cfg.MODEL.MYMETHOD.WEIGHT = 1.0
    # AlignWarmupHook ramps loss_align linearly up to WEIGHT over this many epochs.
    cfg.MODEL.MYMETHOD.WARMUP_EPOCHS = 1


@META_ARCH_REGISTRY.register()
class MyMethod(ClipTextImageBaseline):
    """The baseline's losses (MODEL.T2I.LOSSES) plus loss_align."""

    def __init__(self, cfg: CN) -> None:
        super().__init__(cfg)
        self.align_weight = check_range("MODEL.MYMETHOD.WEIGHT", cfg.MODEL.MYMETHOD.WEIGHT, 0.0)
        self.ramp = 1.0  # set by AlignWarmupHook

    def losses(self, feats: dict, batch: dict) -> dict[str, Tensor]:
        out = super().losses(feats, batch)  # loss_sdm, loss_id (and loss_mlm)
        v = feats["image"].global_feat.float()  # [B, D]
        t = feats["text"].global_feat.float()  # [B, D]
        cos = F.cosine_similarity(v, t, dim=1)  # [B]
        out["loss_align"] = self.align_weight * self.ramp * (1.0 - cos).mean()
        return out


@HOOK_REGISTRY.register()
class AlignWarmupHook(HookBase):
    """Hands the epoch's ramp factor to the model before every epoch."""

    def __init__(self, cfg: CN, trainer) -> None:
        key = "MODEL.MYMETHOD.WARMUP_EPOCHS"
        self.epochs = check_range(key, cfg.MODEL.MYMETHOD.WARMUP_EPOCHS, 1)

    def before_epoch(self) -> None:  # recomputed from the epoch: --resume needs no saved state
        model = unwrap_model(self.trainer.model)
        model.ramp = min(1.0, (self.trainer.epoch + 1) / self.epochs)
