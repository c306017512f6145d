"""fast-reid registration: ``MODEL.BACKBONE.NAME: build_clip_backbone`` builds ClipEncoders."""

from __future__ import annotations

from fastreid.config import CfgNode
from fastreid.modeling.backbones.build import BACKBONE_REGISTRY

from .encoders import ClipEncoders
from .factory import create_clip

__all__ = ["build_clip_backbone"]


@BACKBONE_REGISTRY.register()
def build_clip_backbone(cfg: CfgNode) -> ClipEncoders:
    """Build :class:`ClipEncoders` from ``cfg.MODEL.CLIP.*`` at ``cfg.INPUT.SIZE_TRAIN`` ([H, W]).

    Reads MODEL.CLIP.{NAME, WEIGHTS, RANDOM_INIT, QUICK_GELU, VIT_STRIDE, RN_LAST_STRIDE_1,
    CONTEXT_LENGTH} (added by ``fastreid_ext.config.add_fastreid_ext_config``).
    """
    if "CLIP" not in cfg.MODEL:
        raise KeyError(
            "cfg.MODEL.CLIP is missing: call fastreid_ext.config.add_fastreid_ext_config(cfg) "
            "before merging the config file"
        )
    c = cfg.MODEL.CLIP
    return create_clip(
        c.NAME,
        tuple(cfg.INPUT.SIZE_TRAIN),
        weights=c.WEIGHTS,
        random_init=c.RANDOM_INIT,
        quick_gelu=c.QUICK_GELU,
        vit_stride=c.VIT_STRIDE,
        rn_last_stride_1=c.RN_LAST_STRIDE_1,
        context_length=c.CONTEXT_LENGTH,
    )
