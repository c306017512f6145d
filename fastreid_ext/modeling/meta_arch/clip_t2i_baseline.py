"""CLIP dual-encoder text-image baseline (IRRA recipe): SDM + ID (+ MLM) losses."""

from __future__ import annotations

from typing import Any, Dict

import torch
from fastreid.config import CfgNode
from fastreid.modeling.backbones.build import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from ...registry import lookup
from ...text.tokenizer import VOCAB_SIZE
from ..heads.mlm_head import CrossModalMLMHead
from ..losses import identity_loss, mlm_loss, sdm_loss

__all__ = ["ClipTextImageBaseline"]

KNOWN_LOSSES = ("SDM", "ID", "MLM")


@META_ARCH_REGISTRY.register()
class ClipTextImageBaseline(nn.Module):
    """Image and text CLIP encoders trained with instance-level matching losses.

    Training batch (from :class:`TextImageTrainSet`): ``images [B,3,H,W]`` in [0,255],
    ``caption_ids [B,L]``, ``targets [B]`` (identity labels), and ``mlm_ids``/``mlm_labels [B,L]``
    when MLM is on. Returns a dict of weighted losses.

    Inference batch: ``images`` and/or ``caption_ids``; returns ``image_feats [B,D]`` (CLS after
    projection) and/or ``text_feats [B,D]`` (EOT after projection). Only the two encoders are used
    at inference; ``training_only_prefixes`` lists the modules an inference checkpoint may lack.

    Subclasses (Propot, CPCL) extend :meth:`extract` and :meth:`losses`.
    """

    training_only_prefixes = ("classifier.", "mlm_head.")

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        self.backbone = lookup(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.NAME, "MODEL.BACKBONE.NAME")(
            cfg
        )
        mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(cfg.MODEL.PIXEL_STD, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

        t2i = cfg.MODEL.T2I
        unknown = [n for n in t2i.LOSSES if n not in KNOWN_LOSSES]
        if unknown:
            raise KeyError(f"MODEL.T2I.LOSSES: unknown loss {unknown}; known: {KNOWN_LOSSES}")
        self.loss_names = tuple(t2i.LOSSES)
        self.sdm_tau, self.sdm_eps, self.sdm_weight = t2i.SDM_TAU, t2i.SDM_EPS, t2i.SDM_WEIGHT
        self.id_weight, self.mlm_weight = t2i.ID_WEIGHT, t2i.MLM_WEIGHT
        dim = self.backbone.embed_dim
        if "ID" in self.loss_names:
            num_classes = cfg.MODEL.HEADS.NUM_CLASSES
            if num_classes <= 0:
                raise ValueError(
                    "The ID loss needs MODEL.HEADS.NUM_CLASSES > 0 (set from the data)"
                )
            self.classifier = nn.Linear(dim, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        if "MLM" in self.loss_names:
            if not self.backbone.is_vit:
                raise ValueError(
                    "The MLM loss needs image tokens: use a ViT CLIP (MODEL.CLIP.NAME)"
                )
            self.mlm_head = CrossModalMLMHead(dim, t2i.MLM_HEADS, t2i.MLM_DEPTH, VOCAB_SIZE)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Normalise ``batch["images"]`` out of place (the batch is not modified)."""
        images = batch["images"].to(self.device, non_blocking=True)
        return (images - self.pixel_mean) / self.pixel_std

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if not self.training:
            return self.inference(batch)
        return self.losses(self.extract(batch), batch)

    @torch.no_grad()
    def inference(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        if "images" in batch:
            out["image_feats"] = self.backbone.encode_image(self.preprocess_image(batch))
        if "caption_ids" in batch:
            out["text_feats"] = self.backbone.encode_text(batch["caption_ids"].to(self.device))
        return out

    def extract(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """Encoder outputs of a training batch: ``image``/``text`` feature tuples (global + tokens)."""
        return {
            "image": self.backbone.encode_image_tokens(self.preprocess_image(batch)),
            "text": self.backbone.encode_text_tokens(batch["caption_ids"].to(self.device)),
        }

    def losses(self, feats: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        pids = batch["targets"].to(self.device)
        v, t = feats["image"].global_feat, feats["text"].global_feat
        out: Dict[str, torch.Tensor] = {}
        if "SDM" in self.loss_names:
            out["loss_sdm"] = self.sdm_weight * sdm_loss(v, t, pids, self.sdm_tau, self.sdm_eps)
        if "ID" in self.loss_names:
            out["loss_id"] = self.id_weight * identity_loss(
                self.classifier(v.float()), self.classifier(t.float()), pids
            )
        if "MLM" in self.loss_names:
            out["loss_mlm"] = self.masked_language_loss(feats, batch)
        return out

    def masked_language_loss(self, feats: Dict[str, Any], batch: Dict[str, Any]) -> torch.Tensor:
        """Weighted MLM loss: the masked captions ``batch["mlm_ids"]`` [B, L] are encoded, the MLM
        head attends to ``feats["image"].tokens`` [B, T, D] and predicts ``mlm_labels`` [B, L]."""
        if "mlm_ids" not in batch:
            raise KeyError("MODEL.T2I.LOSSES has MLM but the batch has no 'mlm_ids'")
        masked = self.backbone.encode_text_tokens(batch["mlm_ids"].to(self.device))
        scores = self.mlm_head(masked.tokens, feats["image"].tokens)
        return self.mlm_weight * mlm_loss(scores, batch["mlm_labels"].to(self.device))
