"""CSDN's image encoder: modality-specific CLIP stems and a shared CLIP trunk, plus its heads."""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TwoStreamImageEncoder", "VisualOutputs", "GeneralizedMeanPooling", "BNClassifierHead"]


class VisualOutputs(NamedTuple):
    """Image-encoder outputs for ``B`` images.

    Attributes:
        global_feat: input of the GeM head: the ResNet layer4 map ``[B, C, h, w]`` (GeM pooled by
            the head) or the ViT CLS token after ``ln_post`` ``[B, width]``.
        proj_feat: ``[B, D]`` CLIP-projected feature (ResNet attention pool / ViT CLS @ proj).
    """

    global_feat: torch.Tensor
    proj_feat: torch.Tensor


class TwoStreamImageEncoder(nn.Module):
    """Visible and infrared stems in front of one shared CLIP image trunk.

    ResNet (CSDN): stem = conv1-bn1-conv2-bn2-conv3-bn3-ReLU-avgpool (``single_relu``, the
    authors' stem keeps one ReLU of CLIP's three) or CLIP's stem with all three ReLUs; the
    infrared stem is a deep copy. Trunk = layer1..layer4 (+ attention pool). ViT (a variant, not
    in the authors' code): the patch embedding is modality-specific, the rest is shared.

    Args:
        visual: an open_clip image tower (``ModifiedResNet`` or ``VisionTransformer``); its
            modules are moved into this encoder.
        is_vit: which of the two it is.
        single_relu: ResNet stem with a single ReLU.
    """

    def __init__(self, visual: nn.Module, is_vit: bool, single_relu: bool = True) -> None:
        super().__init__()
        self.is_vit = is_vit
        if is_vit:
            stem = visual.conv1
            visual.conv1 = None  # the stems own it now
            self.vit = visual
            self.global_dim = int(stem.out_channels)
            self.proj_dim = int(visual.proj.shape[1])
        else:
            v = visual
            parts = [v.conv1, v.bn1, v.act1, v.conv2, v.bn2, v.act2, v.conv3, v.bn3, v.act3]
            if single_relu:
                parts = [v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3, v.act3]
            stem = nn.Sequential(*parts, v.avgpool)
            self.trunk = nn.Sequential(v.layer1, v.layer2, v.layer3, v.layer4)
            self.attnpool = v.attnpool
            self.global_dim = int(v.attnpool.k_proj.in_features)
            self.proj_dim = int(v.attnpool.c_proj.out_features)
        self.stems = nn.ModuleList([stem, copy.deepcopy(stem)])

    def _vit(self, tokens: torch.Tensor) -> VisualOutputs:
        v = self.vit
        x = tokens.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_post(v.transformer(v.ln_pre(v.patch_dropout(x))))[:, 0]
        return VisualOutputs(x, x @ v.proj)

    def forward(
        self, visible: Optional[torch.Tensor] = None, infrared: Optional[torch.Tensor] = None
    ) -> VisualOutputs:
        """Encode ``visible [Bv, 3, H, W]`` and/or ``infrared [Br, 3, H, W]`` (normalised); the
        outputs hold the visible images first. Both streams go through the trunk together."""
        stems = [
            self.stems[m](x) for m, x in enumerate((visible, infrared)) if x is not None and len(x)
        ]
        if not stems:
            raise ValueError("TwoStreamImageEncoder needs visible or infrared images")
        x = torch.cat(stems) if len(stems) > 1 else stems[0]
        if self.is_vit:
            return self._vit(x)
        fmap = self.trunk(x)
        return VisualOutputs(fmap, self.attnpool(fmap))


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling with a learnable exponent: ``[B, C, h, w] -> [B, C]``,
    ``mean(clamp(x, eps)^p)^(1/p)`` (p starts at 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1)
        return pooled.pow(1.0 / self.p).flatten(1)


class BNClassifierHead(nn.Module):
    """[GeM] -> BatchNorm1d (weight 1, bias 0, both trained) -> Linear without bias (std 0.001).

    ``forward(x) -> (feat [B, C], bn_feat [B, C], logits [B, N])``. ``x`` is a feature map
    ``[B, C, h, w]`` with ``pool=True`` (ResNet layer4; ``feat`` = its GeM pooling) or a vector
    ``[B, C]`` with ``pool=False`` (``feat`` = ``x``).
    """

    def __init__(self, dim: int, num_classes: int, pool: bool) -> None:
        super().__init__()
        self.pool = GeneralizedMeanPooling() if pool else None
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor):
        feat = self.pool(x) if self.pool is not None else x
        bn = self.bn(feat)
        return feat, bn, self.classifier(bn)
