"""CPCL meta-architecture: the CLIP dual encoder trained with PCM + ICPM on pseudo labels."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from fastreid_ext.modeling.memory import PrototypicalMemory
from fastreid_ext.modeling.meta_arch.clip_t2i_baseline import ClipTextImageBaseline

from .losses import ICPM_POSITIVES, PCM_MODES, hcm_losses

__all__ = ["CPCLT2I", "StepFeatures"]

KNOWN_LOSSES = ("PCM", "ICPM")


class StepFeatures(NamedTuple):
    """Detached features and pseudo labels of the last training batch (for the memory update)."""

    image_feats: torch.Tensor
    text_feats: torch.Tensor
    image_labels: torch.Tensor
    text_labels: torch.Tensor


@META_ARCH_REGISTRY.register()
class CPCLT2I(ClipTextImageBaseline):
    """Weakly supervised CLIP text-image model of CPCL.

    Training batch (:class:`cpcl.data.CPCLTrainSet`): ``images [B,3,H,W]``, ``caption_ids [B,L]``,
    ``image_labels [B]``, ``text_labels [B]`` (pseudo labels, ``-1`` = outlier); no identity.
    Losses: ``loss_pcm`` against the prototypical memories attached by
    :class:`cpcl.hook.CPCLPseudoLabelHook` (:meth:`set_memories`), ``loss_icpm``, and the
    baseline's label-free MLM if ``MODEL.T2I.LOSSES`` lists it. After each forward the detached
    global features are kept for the memory update (:meth:`pop_step_features`).

    Inference is the baseline's: global image / text features only; the memories are not part of
    the model's state dict.
    """

    def __init__(self, cfg: CfgNode) -> None:
        supervised = [n for n in cfg.MODEL.T2I.LOSSES if n in ("SDM", "ID")]
        if supervised:
            raise ValueError(
                f"MODEL.T2I.LOSSES {list(cfg.MODEL.T2I.LOSSES)}: {supervised} need identity "
                "labels, which weakly supervised CPCL does not have (use CPCL.LOSSES)"
            )
        super().__init__(cfg)
        c = cfg.CPCL
        unknown = [n for n in c.LOSSES if n not in KNOWN_LOSSES]
        if unknown:
            raise KeyError(f"CPCL.LOSSES: unknown loss {unknown}; known: {KNOWN_LOSSES}")
        if c.PCM.MODE not in PCM_MODES:
            raise ValueError(f"CPCL.PCM.MODE must be one of {PCM_MODES}, got {c.PCM.MODE!r}")
        if c.ICPM.POSITIVES not in ICPM_POSITIVES:
            raise ValueError(
                f"CPCL.ICPM.POSITIVES must be one of {ICPM_POSITIVES}, got {c.ICPM.POSITIVES!r}"
            )
        if not c.LOSSES and not self.loss_names:
            raise ValueError("CPCL.LOSSES and MODEL.T2I.LOSSES are both empty: nothing to train")
        self.cpcl_cfg = c
        # plain attributes (a tuple is not registered): not in state_dict, not seen by DDP
        self._memories: Optional[Tuple[PrototypicalMemory, PrototypicalMemory]] = None
        self._step: Optional[StepFeatures] = None

    def set_memories(self, image_memory: PrototypicalMemory, text_memory: PrototypicalMemory):
        """Attach the image and text prototypical memories used by PCM."""
        self._memories = (image_memory, text_memory)

    def pop_step_features(self) -> Optional[StepFeatures]:
        """The last training batch's detached features and labels (then forgotten)."""
        step, self._step = self._step, None
        return step

    def losses(self, feats: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """HCM losses (and the optional MLM) of one training batch.

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
        if "PCM" in self.cpcl_cfg.LOSSES:
            if self._memories is None:
                raise RuntimeError(
                    "CPCLT2I: no prototypical memories attached; train with TRAINER.HOOKS "
                    "['CPCLPseudoLabelHook'] (it clusters and sets them every epoch)"
                )
            mv, mt = self._memories[0].features, self._memories[1].features
        else:
            mv = mt = v.new_zeros(0, v.shape[1])
        out.update(hcm_losses(v, t, yv, yt, mv, mt, self.cpcl_cfg, image_ids))
        self._step = StepFeatures(v.detach(), t.detach(), yv, yt)
        return out
