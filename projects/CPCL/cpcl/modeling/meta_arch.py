"""CPCL meta-architecture: the CLIP dual encoder trained with PCM + ICPM on pseudo labels."""

from __future__ import annotations

from typing import Any, Dict

import torch
from fastreid.config import CfgNode
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from fastreid_ext.modeling.meta_arch.clip_t2i_baseline import ClipTextImageBaseline

from ..config import check_cpcl_config
from .losses import hcm_losses
from .pmm import PrototypicalMultiModalMemory

__all__ = ["CPCLT2I"]


@META_ARCH_REGISTRY.register()
class CPCLT2I(ClipTextImageBaseline):
    """Weakly supervised CLIP text-image model of CPCL.

    Training batch (:class:`cpcl.data.CPCLTrainSet`): ``images [B,3,H,W]``, ``caption_ids [B,L]``,
    ``image_labels [B]``, ``text_labels [B]`` (pseudo labels, ``-1`` = outlier), ``image_ids [B]``;
    no identity. Losses: ``loss_pcm`` against the prototypical memories ``pmm`` (``M^v``
    ``[K_v, D]``, ``M^t`` ``[K_t, D]``), ``loss_icpm``, and the baseline's label-free MLM if
    ``MODEL.T2I.LOSSES`` lists it. After the losses, the step's features of every rank
    momentum-update ``pmm`` (``MODEL.CPCL.PMM.UPDATE``).

    State flows one way: :class:`cpcl.hooks.CPCLPseudoLabelHook` installs each clustering's
    centroids with :meth:`reset_memories` (or empties the memories with :meth:`clear_memories`)
    and reads nothing back. The memories are buffers, saved with the model's checkpoint (so
    ``--resume`` restores them exactly) and listed in ``training_only_prefixes``: inference is
    the baseline's (global image / text features only) and loads checkpoints without them.
    """

    training_only_prefixes = ClipTextImageBaseline.training_only_prefixes + ("pmm.",)

    def __init__(self, cfg: CfgNode) -> None:
        check_cpcl_config(cfg)
        super().__init__(cfg)
        c = cfg.MODEL.CPCL
        self.cpcl_cfg = c
        update = c.PMM.UPDATE
        self.pmm = PrototypicalMultiModalMemory(
            self.backbone.embed_dim, update.MOMENTUM, update.NAME
        )
        # the memories only change when PCM reads them
        self.pmm_update_enabled = bool(update.ENABLED and c.PCM.ENABLED)

    @torch.no_grad()
    def reset_memories(self, image_centroids: torch.Tensor, text_centroids: torch.Tensor) -> None:
        """Install the centroids of a clustering: ``M^v`` ``[K_v, D]``, ``M^t`` ``[K_t, D]``."""
        self.pmm.reset(image_centroids, text_centroids)

    @torch.no_grad()
    def clear_memories(self) -> None:
        """Empty both memories (``[0, D]``): no pseudo labels yet."""
        empty = torch.zeros(0, self.pmm.dim)
        self.pmm.reset(empty, empty)

    def losses(self, feats: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """HCM losses (and the optional MLM) of one training batch, then the memory update.

        Args:
            feats: the baseline's encoder outputs; ``feats["image"].global_feat`` and
                ``feats["text"].global_feat`` are ``[B, D]`` (``.tokens`` ``[B, T, D]`` for MLM).
            batch: ``image_labels`` / ``text_labels`` ``[B]`` pseudo labels (``-1`` = outlier),
                ``image_ids`` ``[B]`` (pairing information: captions of one image are ICPM
                positives of each other), ``mlm_ids`` / ``mlm_labels`` ``[B, L]`` for MLM.
        Returns:
            ``{"loss_pcm", "loss_icpm", "loss_mlm"}`` (those enabled), float32 scalars.
        """
        out: Dict[str, torch.Tensor] = {}
        if "MLM" in self.loss_names:  # label-free, as in the baseline
            out["loss_mlm"] = self.masked_language_loss(feats, batch)
        v, t = feats["image"].global_feat, feats["text"].global_feat
        yv = batch["image_labels"].to(self.device)
        yt = batch["text_labels"].to(self.device)
        if "image_ids" not in batch:
            raise KeyError("CPCLT2I: the training batch has no 'image_ids' (use CPCLTrainSet)")
        image_ids = torch.as_tensor(batch["image_ids"]).to(self.device)
        # the losses see the memories of before this step's update; backward needs those values
        # after the in-place update below, hence copies
        mv, mt = self.pmm.image.features, self.pmm.text.features
        if self.pmm_update_enabled:
            mv, mt = mv.clone(), mt.clone()
        out.update(hcm_losses(v, t, yv, yt, mv, mt, self.cpcl_cfg, image_ids))
        if self.pmm_update_enabled:
            self.pmm.update(v, t, yv, yt, gather=True)
        return out
