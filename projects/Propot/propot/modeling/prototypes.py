"""Propot's identity prototypes: 'initialize, adapt, enrich, then aggregate' (paper Secs.
3.2-3.5)."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode
from torch import nn

from fastreid_ext.config import ConfigValueError

from ..config import check_propot_config, num_candidate_prototypes
from .aggregation import build_prototype_aggregation
from .prompting import DomainConditionalPrompting, InstanceConditionalPrompting

__all__ = ["PropotPrototypes"]

logger = logging.getLogger(__name__)


class PropotPrototypes(nn.Module):
    """Initial prototypes (frozen buffers), DPP, IPP and the aggregation, for both modalities.

    Buffers (saved in checkpoints, never trained): ``initial_v``/``initial_t`` [N, d] = pt^v, pt^t
    of eq. (1), filled before training by ``PropotInitialPrototypeHook``; ``initialized`` (bool,
    0-dim) says whether they have been filled; ``data_fingerprint`` (int64, 0-dim) identifies the
    training data they were computed from (0: unknown). Loading a state dict whose
    ``initial_v``/``initial_t`` are missing or of another shape (e.g. a checkpoint trained with
    another number of identities, whose tensors fast-reid's Checkpointer drops) resets
    ``initialized``, so that the hook computes them again.

    ``forward(ids, v, t)`` returns the final prototypes p^v, p^t [M, d] of identities ``ids``
    (``None``: all N) given the batch's global features V_B, T_B [B, d].

    Reads ``MODEL.PROPOT.{BLOCK, DPP, IPP, AGGREGATION}`` (validated by
    :func:`~propot.config.check_propot_config`).
    """

    def __init__(self, cfg: CfgNode, num_ids: int, dim: int) -> None:
        super().__init__()
        if num_ids <= 0:
            raise ValueError(
                "Propot needs MODEL.HEADS.NUM_CLASSES > 0 training identities (set from the data)"
            )
        check_propot_config(cfg)
        c = cfg.MODEL.PROPOT
        if dim % c.BLOCK.NUM_HEADS:
            raise ConfigValueError(
                "MODEL.PROPOT.BLOCK.NUM_HEADS", c.BLOCK.NUM_HEADS, f"a divisor of the width {dim}"
            )
        self.num_ids, self.dim = num_ids, dim
        self.register_buffer("initial_v", torch.zeros(num_ids, dim))
        self.register_buffer("initial_t", torch.zeros(num_ids, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("data_fingerprint", torch.zeros((), dtype=torch.int64))
        b = c.BLOCK
        block = dict(
            heads=b.NUM_HEADS, ffn_ratio=b.FFN_RATIO, dropout=b.DROPOUT, norm_first=b.NORM_FIRST
        )
        self.dpp: Optional[DomainConditionalPrompting] = None
        if c.DPP.ENABLED:
            self.dpp = DomainConditionalPrompting(
                num_ids,
                dim,
                c.DPP.NUM_CONTEXTS,
                c.DPP.NUM_BLOCKS,
                share_encoder=c.DPP.SHARING == "shared",
                init_std=c.DPP.CONTEXT_INIT_STD,
                **block,
            )
        self.ipp: Optional[InstanceConditionalPrompting] = None
        if c.IPP.INTRA.ENABLED or c.IPP.INTER.ENABLED:
            self.ipp = InstanceConditionalPrompting(
                dim,
                c.IPP.NUM_BLOCKS,
                intra=c.IPP.INTRA.ENABLED,
                inter=c.IPP.INTER.ENABLED,
                sharing=c.IPP.SHARING,
                tie_blocks=c.IPP.TIE_BLOCKS,
                **block,
            )
        self.ipp_query = c.IPP.QUERY
        self.detach_instances = c.IPP.DETACH_INSTANCES
        self.normalize_instances = c.IPP.NORMALIZE_INSTANCES
        self.aggregation = build_prototype_aggregation(cfg, dim, num_candidate_prototypes(cfg))

    @torch.no_grad()
    def set_initial(self, pt_v: torch.Tensor, pt_t: torch.Tensor, fingerprint: int = 0) -> None:
        """Fill the initial prototypes (pt^v, pt^t [N, d]) and mark them initialised;
        ``fingerprint``: int64 identifying the training data (``digest_to_fingerprint``)."""
        expected = (self.num_ids, self.dim)
        if tuple(pt_v.shape) != expected or tuple(pt_t.shape) != expected:
            raise ValueError(
                f"Initial prototypes must be {expected}, got {tuple(pt_v.shape)} and "
                f"{tuple(pt_t.shape)} (does the training set match MODEL.HEADS.NUM_CLASSES?)"
            )
        self.initial_v.copy_(pt_v)
        self.initial_t.copy_(pt_t)
        self.initialized.fill_(True)
        self.data_fingerprint.fill_(int(fingerprint))

    def _load_from_state_dict(
        self,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Dict[str, Any],
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        """Load as usual, then mark the prototypes uninitialised unless both ``initial_v`` and
        ``initial_t`` were loaded with shape [N, d]; a state dict without ``data_fingerprint``
        leaves it 0 (unknown)."""
        expected = (self.num_ids, self.dim)
        shapes = {
            k: tuple(state_dict[prefix + k].shape) if prefix + k in state_dict else None
            for k in ("initial_v", "initial_t")
        }
        loaded_flag = state_dict.get(prefix + "initialized")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        with torch.no_grad():
            if prefix + "data_fingerprint" not in state_dict:
                self.data_fingerprint.zero_()
            if any(s != expected for s in shapes.values()):
                if loaded_flag is not None and bool(loaded_flag):
                    logger.warning(
                        "%sinitial_v/initial_t of the loaded state dict are %s, the model needs "
                        "%s: the initial prototypes are marked uninitialised and will be "
                        "recomputed by PropotInitialPrototypeHook",
                        prefix,
                        {k: v if v is not None else "missing" for k, v in shapes.items()},
                        expected,
                    )
                self.initialized.fill_(False)

    def forward(
        self, ids: Optional[torch.Tensor], v: torch.Tensor, t: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Final prototypes.

        Args:
            ids: [M] identity indices, or ``None`` for all N identities in order.
            v, t: [B, d] the batch's global image / text features (keys/values of the CAD).

        Returns:
            ``(p^v, p^t)``, each [M, d] float32: eq. (6) (or the configured aggregation) over the
            enabled candidates p_a (DPP), p_en (IPP intra), p_eo (IPP inter).
        """
        pt_v = self.initial_v if ids is None else self.initial_v[ids]
        pt_t = self.initial_t if ids is None else self.initial_t[ids]
        cand_v, cand_t = [], []
        if self.dpp is not None:
            a_v, a_t = self.dpp(ids, pt_v, pt_t)
            cand_v.append(a_v)
            cand_t.append(a_t)
        if self.ipp is not None:
            if self.detach_instances:
                v, t = v.detach(), t.detach()
            if self.normalize_instances:
                v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
            q_v, q_t = (cand_v[0], cand_t[0]) if self.ipp_query == "adapted" else (pt_v, pt_t)
            enriched = self.ipp(q_v, q_t, v, t)
            for call in ("intra", "inter"):
                if f"{call}_v" in enriched:
                    cand_v.append(enriched[f"{call}_v"])
                    cand_t.append(enriched[f"{call}_t"])

        def stack(cands):
            if not cands:
                return pt_v.new_zeros(0, *pt_v.shape)
            return torch.stack([c.float() for c in cands])

        return self.aggregation(pt_v, stack(cand_v), 0), self.aggregation(pt_t, stack(cand_t), 1)
