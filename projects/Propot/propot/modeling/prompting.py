"""Propot's prototypical prompting: domain-conditional (DPP, eq. 2) and instance-conditional
(IPP, eqs. 3-4)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .blocks import PropotBlockStack

__all__ = ["DomainConditionalPrompting", "InstanceConditionalPrompting", "IPP_CALLS"]

#: The four CAD calls of eqs. (3)-(4): name -> (prototype modality, instance modality).
IPP_CALLS: Dict[str, Tuple[str, str]] = {
    "intra_v": ("v", "v"),  # p_en^v = CAD(pt^v, V_B, V_B)
    "intra_t": ("t", "t"),  # p_en^t = CAD(pt^t, T_B, T_B)
    "inter_v": ("v", "t"),  # p_eo^v = CAD(pt^v, T_B, T_B)
    "inter_t": ("t", "v"),  # p_eo^t = CAD(pt^t, V_B, V_B)
}


class DomainConditionalPrompting(nn.Module):
    """DPP, eq. (2): ``p_a,i = SAE([X_i]_1, ..., [X_i]_K, pt_i)[-1]`` for each prototype.

    Every identity i has its own K learnable context vectors per modality (``contexts``
    [2, N, K, d]; index 0 = visual c_v,i, 1 = textual c_t,i), placed before its initial prototype.
    The SAE (``depth`` = N_a self-attention + FFN blocks) is shared by both modalities or one per
    modality (``MODEL.PROPOT.DPP.SHARING``). Each identity's sequence is encoded independently, so encoding a subset of the
    identities gives exactly their rows of the full computation.

    Args:
        num_ids: N training identities.
        dim: feature width d.
        num_contexts: K, context vectors per identity and modality.
        depth: N_a.
        heads, ffn_ratio, dropout, norm_first: block settings (see :class:`PropotAttentionBlock`).
        share_encoder: one SAE for both modalities.
        init_std: std of the normal initialisation of the contexts.
    """

    def __init__(
        self,
        num_ids: int,
        dim: int,
        num_contexts: int = 4,
        depth: int = 1,
        heads: int = 8,
        ffn_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_first: bool = True,
        share_encoder: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if num_ids <= 0 or num_contexts < 1:
            raise ValueError(
                f"DomainConditionalPrompting: need num_ids > 0 and K >= 1, got {num_ids}, "
                f"{num_contexts}"
            )
        self.contexts = nn.Parameter(torch.randn(2, num_ids, num_contexts, dim) * init_std)
        self.encoders = nn.ModuleList(
            PropotBlockStack(dim, depth, heads, ffn_ratio, dropout, norm_first, cross=False)
            for _ in range(1 if share_encoder else 2)
        )

    def forward(
        self, ids: Optional[torch.Tensor], pt_v: torch.Tensor, pt_t: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Task-adapted prototypes of identities ``ids``.

        Args:
            ids: [M] identity indices (rows of ``contexts``), or ``None`` for all N in order.
            pt_v, pt_t: [M, d] initial visual / textual prototypes of those identities.

        Returns:
            ``(p_a^v, p_a^t)``, each [M, d]: the SAE output at the prototype slot (last).
        """
        ctx = self.contexts if ids is None else self.contexts[:, ids]  # [2, M, K, d]
        if ctx.shape[1] != pt_v.shape[0] or pt_v.shape != pt_t.shape:
            raise ValueError(
                f"DomainConditionalPrompting: {ctx.shape[1]} identities but prototypes of shape "
                f"{tuple(pt_v.shape)} and {tuple(pt_t.shape)}"
            )
        pts = torch.stack([pt_v, pt_t]).to(ctx.dtype).unsqueeze(2)  # [2, M, 1, d]
        seq = torch.cat([ctx, pts], dim=2)  # [2, M, K + 1, d]
        if len(self.encoders) == 1:
            out = self.encoders[0](seq.flatten(0, 1)).unflatten(0, seq.shape[:2])
            return out[0, :, -1], out[1, :, -1]
        return self.encoders[0](seq[0])[:, -1], self.encoders[1](seq[1])[:, -1]


class InstanceConditionalPrompting(nn.Module):
    """IPP, eqs. (3)-(4): a cross-attention decoder (CAD, ``depth`` = N_e blocks of
    cross-attention + FFN) whose queries are prototypes and keys/values the batch's instance
    features.

    Calls (see :data:`IPP_CALLS`): intra-modal ``p_en^v = CAD(q^v, V_B)``, ``p_en^t = CAD(q^t,
    T_B)``; inter-modal ``p_eo^v = CAD(q^v, T_B)``, ``p_eo^t = CAD(q^t, V_B)``. There is no
    attention among prototypes, so each prototype's output depends only on itself and the batch.

    Args:
        dim, depth, heads, ffn_ratio, dropout, norm_first: CAD settings.
        intra, inter: which calls are made.
        sharing: ``"shared"`` (one CAD for every call, batched as one attention over the calls)
            or ``"per_call"`` (an independent CAD per call).
        tie_blocks: one block applied ``depth`` times.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 3,
        heads: int = 8,
        ffn_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_first: bool = True,
        intra: bool = True,
        inter: bool = True,
        sharing: str = "shared",
        tie_blocks: bool = False,
    ) -> None:
        super().__init__()
        if not (intra or inter):
            raise ValueError("InstanceConditionalPrompting: enable intra and/or inter")
        if sharing not in ("shared", "per_call"):
            raise ValueError(
                "InstanceConditionalPrompting: sharing must be 'shared' or 'per_call', got "
                f"'{sharing}'"
            )
        self.calls = [
            c
            for c in IPP_CALLS
            if (intra and c.startswith("intra")) or (inter and c.startswith("inter"))
        ]
        self.sharing = sharing

        def cad() -> PropotBlockStack:
            return PropotBlockStack(
                dim, depth, heads, ffn_ratio, dropout, norm_first, cross=True, tie_blocks=tie_blocks
            )

        names = ["shared"] if sharing == "shared" else self.calls
        self.decoders = nn.ModuleDict({name: cad() for name in names})

    def forward(
        self,
        q_v: torch.Tensor,
        q_t: torch.Tensor,
        feats_v: torch.Tensor,
        feats_t: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """Instance-enriched prototypes.

        Args:
            q_v, q_t: [M, d] visual / textual query prototypes.
            feats_v, feats_t: [B, d] the batch's image (V_B) / text (T_B) global features.

        Returns:
            ``{call: [M, d]}`` for each enabled call of :data:`IPP_CALLS`.
        """
        queries = {"v": q_v, "t": q_t}
        memories = {"v": feats_v, "t": feats_t}
        if self.sharing == "shared":
            q = torch.stack([queries[IPP_CALLS[c][0]] for c in self.calls])  # [C, M, d]
            m = torch.stack([memories[IPP_CALLS[c][1]] for c in self.calls])  # [C, B, d]
            out = self.decoders["shared"](q, m.to(q.dtype))
            return {c: out[k] for k, c in enumerate(self.calls)}
        return {
            c: self.decoders[c](
                queries[IPP_CALLS[c][0]][None], memories[IPP_CALLS[c][1]][None].to(q_v.dtype)
            )[0]
            for c in self.calls
        }
