"""Prototype aggregation: APA (eqs. 5-6) and the Table-5 variants (sum, mean, MLP, learned)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, Type

import torch
import torch.nn.functional as F
from torch import nn

from fastreid_ext.config import ConfigValueError, check_choice

from ..config import LEARNED_AGGREGATIONS, NO_CANDIDATE_AGGREGATIONS

__all__ = [
    "PrototypeAggregation",
    "AdaptivePrototypeAggregation",
    "SumAggregation",
    "MeanAggregation",
    "MLPWeightAggregation",
    "LearnedWeightAggregation",
    "PROTOTYPE_AGGREGATIONS",
    "build_prototype_aggregation",
]


class PrototypeAggregation(nn.Module, ABC):
    """Base: ``p_i = [pt_i if residual] + sum_k w_k,i p_k,i`` over the candidate prototypes
    (p_a, p_en, p_eo, those enabled). Subclasses define the weights ``w`` [M, n]. Computed in
    float32 (autocast off): raw dot products of summed CLIP features are large.

    With no candidate (only initial prototypes, Table 4 row 1) the result is ``pt``.
    """

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual

    @abstractmethod
    def weights(self, pt: torch.Tensor, cands: torch.Tensor, modality: int) -> torch.Tensor:
        """``pt`` [M, d], ``cands`` [n, M, d] (float32), ``modality`` 0 = visual, 1 = textual
        -> weights [M, n]."""

    def forward(self, pt: torch.Tensor, cands: torch.Tensor, modality: int) -> torch.Tensor:
        """``pt`` [M, d] initial prototypes, ``cands`` [n, M, d] candidates -> [M, d]."""
        pt = pt.float()
        if cands.shape[0] == 0:
            return pt
        with torch.autocast(pt.device.type, enabled=False):
            cands = cands.float()
            w = self.weights(pt, cands, modality)  # [M, n]
            agg = torch.einsum("mn,nmd->md", w, cands)
            return pt + agg if self.residual else agg


class AdaptivePrototypeAggregation(PrototypeAggregation):
    """APA, eqs. (5)-(6): ``w_k,i = softmax_k(pt_i . p_k,i / tau)``, ``p_i = pt_i + sum_k w_k,i
    p_k,i``. The initial prototype is the reference ("prototype baseline") of the weights; no
    learnable parameter. ``tau`` (``AGGREGATION.APA.TAU``) divides the scores; ``normalize``
    (``AGGREGATION.APA.NORMALIZE``) uses cosines instead of raw dot products."""

    def __init__(self, residual: bool = True, tau: float = 1.0, normalize: bool = False) -> None:
        super().__init__(residual)
        if tau <= 0:
            raise ValueError(f"AdaptivePrototypeAggregation: tau must be > 0, got {tau}")
        self.tau, self.normalize = tau, normalize

    def weights(self, pt: torch.Tensor, cands: torch.Tensor, modality: int) -> torch.Tensor:
        if self.normalize:
            pt, cands = F.normalize(pt, dim=-1), F.normalize(cands, dim=-1)
        scores = torch.einsum("md,nmd->mn", pt, cands)  # eq. (5)
        return torch.softmax(scores / self.tau, dim=1)


class SumAggregation(PrototypeAggregation):
    """Table 5 (1): every candidate with weight 1."""

    def weights(self, pt: torch.Tensor, cands: torch.Tensor, modality: int) -> torch.Tensor:
        return pt.new_ones(pt.shape[0], cands.shape[0])


class MeanAggregation(PrototypeAggregation):
    """Table 5 (2): every candidate with weight 1/n."""

    def weights(self, pt: torch.Tensor, cands: torch.Tensor, modality: int) -> torch.Tensor:
        return pt.new_full((pt.shape[0], cands.shape[0]), 1.0 / cands.shape[0])


class MLPWeightAggregation(PrototypeAggregation):
    """Table 5 (3): an MLP scores each candidate, ``w = softmax_k(MLP(p_k,i))``; one MLP per
    modality, Linear(d, hidden) -> ReLU -> Linear(hidden, 1)."""

    def __init__(self, dim: int, hidden: int = 128, residual: bool = True) -> None:
        super().__init__(residual)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)) for _ in range(2)
        )

    def weights(self, pt: torch.Tensor, cands: torch.Tensor, modality: int) -> torch.Tensor:
        scores = self.mlps[modality](cands).squeeze(-1)  # [n, M]
        return torch.softmax(scores.t(), dim=1)


class LearnedWeightAggregation(PrototypeAggregation):
    """Table 5 (4): weights learned with the network, ``w = softmax_k(theta_m)``: one logit per
    candidate kind and modality (``theta`` [2, n], zeros at start = the mean)."""

    def __init__(self, num_candidates: int, residual: bool = True) -> None:
        super().__init__(residual)
        self.logits = nn.Parameter(torch.zeros(2, max(num_candidates, 1)))

    def weights(self, pt: torch.Tensor, cands: torch.Tensor, modality: int) -> torch.Tensor:
        w = torch.softmax(self.logits[modality, : cands.shape[0]], dim=0)
        return w.expand(pt.shape[0], -1)


PROTOTYPE_AGGREGATIONS: Dict[str, Type[PrototypeAggregation]] = {
    "APA": AdaptivePrototypeAggregation,
    "sum": SumAggregation,
    "mean": MeanAggregation,
    "mlp": MLPWeightAggregation,
    "learned": LearnedWeightAggregation,
}


def build_prototype_aggregation(cfg, dim: int, num_candidates: int) -> PrototypeAggregation:
    """The aggregation named by ``MODEL.PROPOT.AGGREGATION.NAME`` for ``num_candidates``
    candidate prototypes of width ``dim`` (options under ``AGGREGATION.APA`` / ``.MLP``)."""
    c = cfg.MODEL.PROPOT.AGGREGATION
    name = check_choice("MODEL.PROPOT.AGGREGATION.NAME", c.NAME, PROTOTYPE_AGGREGATIONS)
    if num_candidates == 0 and name in LEARNED_AGGREGATIONS:
        raise ConfigValueError("MODEL.PROPOT.AGGREGATION.NAME", name, NO_CANDIDATE_AGGREGATIONS)
    if name == "APA":
        return AdaptivePrototypeAggregation(c.RESIDUAL, c.APA.TAU, c.APA.NORMALIZE)
    if name == "mlp":
        return MLPWeightAggregation(dim, c.MLP.HIDDEN_DIM, c.RESIDUAL)
    if name == "learned":
        return LearnedWeightAggregation(num_candidates, c.RESIDUAL)
    return PROTOTYPE_AGGREGATIONS[name](c.RESIDUAL)
