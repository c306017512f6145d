"""Attention + feed-forward blocks of Propot's self-attention encoder (SAE) and cross-attention
decoder (CAD)."""

from __future__ import annotations

from typing import Optional

import torch
from open_clip.transformer import QuickGELU
from torch import nn

__all__ = ["PropotAttentionBlock", "PropotBlockStack"]


class PropotAttentionBlock(nn.Module):
    """One multi-head attention layer followed by a feed-forward layer, with residuals.

    Pre-LN (``norm_first``, CLIP/IRRA style): ``x = x + Attn(LN(x), LN_kv(m), LN_kv(m))``,
    ``x = x + FFN(LN(x))``. Post-LN: ``x = LN(x + Attn(x, m, m))``, ``x = LN(x + FFN(x))``.
    ``m`` is ``x`` itself for self-attention (SAE) and the memory for cross-attention (CAD); the
    pre-LN cross block normalises the memory with its own LayerNorm. The FFN is
    Linear(d, r d) -> QuickGELU -> Linear(r d, d). No final LayerNorm: the output stays on the
    residual stream of the input prototype.

    Args:
        dim: token width d.
        heads: attention heads (divides ``dim``).
        ffn_ratio: FFN hidden width / d.
        dropout: dropout on the attention weights and on both residual branches.
        norm_first: pre-LN (True) or post-LN.
        cross: cross-attention (queries ``x`` [.., M, d], keys/values ``memory`` [.., B, d]).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_first: bool = True,
        cross: bool = False,
    ) -> None:
        super().__init__()
        if dim <= 0 or heads <= 0 or dim % heads:
            raise ValueError(
                f"PropotAttentionBlock: dim ({dim}) must be a multiple of heads ({heads})"
            )
        hidden = int(round(dim * ffn_ratio))
        if hidden <= 0:
            raise ValueError(f"PropotAttentionBlock: ffn_ratio must be > 0, got {ffn_ratio}")
        self.cross, self.norm_first = cross, norm_first
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_1 = nn.LayerNorm(dim)
        self.ln_1_kv = nn.LayerNorm(dim) if (cross and norm_first) else None
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), QuickGELU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` [S, M, d] (S independent sequences of M tokens); ``memory`` [S, B, d] for a cross
        block (ignored otherwise). Returns [S, M, d]."""
        if self.cross and memory is None:
            raise ValueError("PropotAttentionBlock: a cross-attention block needs a memory")
        if self.norm_first:
            q = self.ln_1(x)
            kv = self.ln_1_kv(memory) if self.cross else q
            x = x + self.dropout(self.attn(q, kv, kv, need_weights=False)[0])
            return x + self.dropout(self.mlp(self.ln_2(x)))
        kv = memory if self.cross else x
        x = self.ln_1(x + self.dropout(self.attn(x, kv, kv, need_weights=False)[0]))
        return self.ln_2(x + self.dropout(self.mlp(x)))


class PropotBlockStack(nn.Module):
    """``depth`` blocks applied in order; with ``tie_blocks`` one block is applied ``depth`` times.

    Initialisation follows CLIP's transformer (as IRRA's cross-modal transformer): attention
    ``in_proj`` ~ N(0, d^-0.5), attention ``out_proj`` and FFN output ~ N(0, d^-0.5 (2 L)^-0.5),
    FFN input ~ N(0, (2 d)^-0.5), biases 0, with L the number of distinct blocks.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        ffn_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_first: bool = True,
        cross: bool = False,
        tie_blocks: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"PropotBlockStack: depth must be >= 1, got {depth}")
        self.depth = depth
        distinct = 1 if tie_blocks else depth
        self.blocks = nn.ModuleList(
            PropotAttentionBlock(dim, heads, ffn_ratio, dropout, norm_first, cross)
            for _ in range(distinct)
        )
        self._reset_parameters(dim, distinct)

    @torch.no_grad()
    def _reset_parameters(self, dim: int, layers: int) -> None:
        attn_std = dim**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp[0].weight, std=(2 * dim) ** -0.5)
            nn.init.zeros_(block.mlp[0].bias)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)
            nn.init.zeros_(block.mlp[2].bias)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` [S, M, d], optional ``memory`` [S, B, d] -> [S, M, d]."""
        for i in range(self.depth):
            x = self.blocks[i % len(self.blocks)](x, memory)
        return x
