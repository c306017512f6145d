"""SII: attention fusion of the visible and infrared text features (CSDN's AttentionFusion)."""

from __future__ import annotations

import torch
from torch import nn

from fastreid_ext.config import check_choice

from ..config import SII_NAMES

__all__ = ["SemanticInformationIntegration"]


def _branch(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout))


class SemanticInformationIntegration(nn.Module):
    """``fused = t_vis + W_c(sum_j a_j v_j)`` with ``q = drop(tanh(W_q t_vis))``,
    ``k_j = drop(tanh(W_k s_j))``, ``v_j = drop(tanh(W_v s_j))``, ``a = softmax_j(q . k_j / sqrt(D))``.

    * ``name="single_key"`` (the authors'): the only source is ``s = t_ir``, so ``a == 1`` and
      ``fused = t_vis + W_c drop(tanh(W_v t_ir))``; ``W_q`` and ``W_k`` never get a gradient
      (they are kept so the module has the authors' structure and parameter count; parameter
      names differ from theirs: :mod:`fastreid_ext.convert` maps their checkpoints).
    * ``name="two_key"``: sources ``(t_vis, t_ir)``; the visible query weighs both texts.

    Inputs ``t_vis, t_ir [B, D]``; output ``[B, D]``.
    """

    def __init__(self, dim: int, name: str = "single_key", dropout: float = 0.1) -> None:
        super().__init__()
        self.dim = dim
        self.name = check_choice("MODEL.CSDN.SII.NAME", name, SII_NAMES)
        self.query, self.key, self.value = (_branch(dim, dropout) for _ in range(3))
        self.common = nn.Linear(dim, dim)

    def _sources(self, t_vis: torch.Tensor, t_ir: torch.Tensor) -> torch.Tensor:
        if self.name == "single_key":
            return t_ir[:, None]
        return torch.stack([t_vis, t_ir], dim=1)

    def attention(self, t_vis: torch.Tensor, t_ir: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, n_sources]`` (each row sums to 1)."""
        src = self._sources(t_vis, t_ir)
        q = self.query(t_vis)[:, None]  # [B, 1, D]
        scores = q @ self.key(src).transpose(1, 2) / self.dim**0.5  # [B, 1, n]
        return scores.softmax(dim=-1).squeeze(1)

    def forward(self, t_vis: torch.Tensor, t_ir: torch.Tensor) -> torch.Tensor:
        if t_vis.shape != t_ir.shape or t_vis.dim() != 2 or t_vis.shape[1] != self.dim:
            raise ValueError(
                f"SII expects two [B, {self.dim}] text features, got {tuple(t_vis.shape)} and "
                f"{tuple(t_ir.shape)}"
            )
        src = self._sources(t_vis, t_ir)
        weights = self.attention(t_vis, t_ir)[:, None]  # [B, 1, n]
        mixed = (weights @ self.value(src)).squeeze(1)
        return self.common(mixed) + t_vis
