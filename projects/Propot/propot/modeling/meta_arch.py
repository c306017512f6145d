"""Propot meta-architecture: the CLIP text-image baseline plus identity prototypes and L_p2i."""

from __future__ import annotations

from typing import Any, Dict

import torch
from fastreid.config import CfgNode
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from fastreid_ext.modeling.meta_arch import ClipTextImageBaseline

from ..config import check_propot_config
from .losses import prototype_to_instance_loss
from .prototypes import PropotPrototypes

__all__ = ["PropotT2I"]


@META_ARCH_REGISTRY.register()
class PropotT2I(ClipTextImageBaseline):
    """Propot (Yan et al., ACM MM 2024): instance-level matching (SDM, ID, MLM of the baseline)
    plus identity-level matching through prototypes, eq. (13):

        L = L_sdm + L_id + lambda_1 L_p2i + lambda_2 L_mlm.

    Training batch and inference contract are the baseline's. The prototype modules
    (``prototypes.*``: frozen initial prototypes, DPP contexts and SAE, IPP's CAD, aggregation)
    are training-only: inference uses the two encoders, and an evaluation checkpoint may lack them.

    With ``MODEL.PROPOT.ENABLED False`` this is the baseline (Table 4 row 0).
    """

    training_only_prefixes = ClipTextImageBaseline.training_only_prefixes + ("prototypes.",)

    def __init__(self, cfg: CfgNode) -> None:
        check_propot_config(cfg)
        super().__init__(cfg)
        c = cfg.MODEL.PROPOT
        self.propot_enabled = bool(c.ENABLED)
        if not self.propot_enabled:
            return
        self.prototypes = PropotPrototypes(
            cfg, cfg.MODEL.HEADS.NUM_CLASSES, self.backbone.embed_dim
        )
        self._initial_checked = False
        self.batch_identities_only = c.BATCH_IDENTITIES_ONLY
        self.p2i_weight, self.p2i_tau = c.P2I.WEIGHT, c.P2I.TAU
        self.p2i_log, self.p2i_reduction = c.P2I.LOG, c.P2I.REDUCTION

    def prototype_loss(self, v: torch.Tensor, t: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Unweighted L_p2i (eq. 10) of a batch: ``v``, ``t`` [B, d] global features, ``pids`` [B].

        Prototypes are computed for the identities in the batch (``BATCH_IDENTITIES_ONLY``) or
        for all N; the loss is the same because identities without instances are skipped.
        """
        if not self._initial_checked:
            # One host sync, on the first step only (the buffer never goes back to False).
            self._initial_checked = bool(self.prototypes.initialized)
        if not self._initial_checked:
            raise RuntimeError(
                "Propot's initial prototypes were never computed: add 'PropotInitialPrototypeHook' "
                "to TRAINER.HOOKS (configs/Propot/Base-Propot.yml does) or load a Propot checkpoint"
            )
        if self.batch_identities_only:
            ids = torch.unique(pids)
            proto_ids = ids
        else:
            ids = None
            proto_ids = torch.arange(self.prototypes.num_ids, device=pids.device)
        p_v, p_t = self.prototypes(ids, v, t)
        kw = dict(tau=self.p2i_tau, use_log=self.p2i_log, reduction=self.p2i_reduction)
        return prototype_to_instance_loss(p_v, proto_ids, v, pids, **kw) + (
            prototype_to_instance_loss(p_t, proto_ids, t, pids, **kw)
        )

    def losses(self, feats: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        out = super().losses(feats, batch)
        if self.propot_enabled:
            pids = batch["targets"].to(self.device)
            v, t = feats["image"].global_feat, feats["text"].global_feat
            out["loss_p2i"] = self.p2i_weight * self.prototype_loss(v, t, pids)
        return out
