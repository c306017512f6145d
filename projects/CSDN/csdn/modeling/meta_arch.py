"""CSDN meta-architecture: two-stream CLIP image encoder, MsPL, SII and the phase-3 losses."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode
from fastreid.modeling.backbones.build import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from fastreid_ext.data.vi.base import INFRARED, VISIBLE
from fastreid_ext.registry import lookup
from fastreid_ext.utils.distributed_ops import all_gather_rows

from ..config import check_csdn_config
from .encoder import BNClassifierHead, TwoStreamImageEncoder
from .fusion import SemanticInformationIntegration
from .losses import msel_loss, supcon_loss, wrt_triplet_loss
from .prompt import IdentityPromptLearner

__all__ = ["CSDN", "PHASES"]

#: Training phases: MsPL prompts, SII fusion, image encoder (HSE).
PHASES = ("prompt", "fusion", "image")
# Modules trained in each phase (parameter-name prefixes).
_PHASE_MODULES = {
    "prompt": ("prompt_learners.",),
    "fusion": ("fusion.",),
    "image": ("image_encoder.", "head_gem.", "head_proj."),
}


@META_ARCH_REGISTRY.register()
class CSDN(nn.Module):
    """CLIP-Driven Semantic Discovery Network (Yu et al., TMM 2025) for visible-infrared ReID.

    Modules: ``image_encoder`` (visible / infrared CLIP stems + shared trunk), ``head_gem`` (GeM +
    BN + classifier on the trunk output), ``head_proj`` (BN + classifier on the projected
    feature f_p), ``text_encoder`` (frozen CLIP text tower), ``prompt_learners`` (MsPL: visible
    and infrared, or one shared), ``fusion`` (SII) and the frozen phase-3 text banks
    ``text_bank_visible / text_bank_infrared [N, D]`` (targets of the visible / infrared images).

    Training batches select the phase's losses by their keys:

    * phase 1 ``{"vis_feats", "ir_feats" [B, D], "targets" [B]}``: SupCon(V -> T) + SupCon(T -> V)
      with V = [v; r], T = [t_vis(y); t_ir(y)] (prompts through the frozen text encoder);
    * phase 2 ``{"feats" [B, D], "targets" [B], "class_text_vis", "class_text_ir" [N, D]}``
      (the frozen prompts' texts of every class): the same with T = SII(t_vis(y), t_ir(y));
    * phase 3 (:class:`~fastreid_ext.data.vi.loaders.CrossModalPairSet` batches): identity CE on
      both heads, weighted-regularised triplet on (GeM feature, f_p), MSEL, and the HSE
      image-to-text CE against the text banks.

    Under DDP with ``MODEL.CSDN.DDP.GATHER_LOSS_FEATURES`` the batch-pool losses (SupCon, WRT,
    MSEL) run on every rank over the rows of all ranks (:meth:`pool`); the per-item losses (ID
    and HSE CE) stay local, DDP's gradient average already making them global batch means.

    Inference: ``{"images" [B, 3, H, W], "modality" [B]} -> {"image_feats"}``: cat(L2(BN(GeM)),
    L2(f_p)), and with ``TEST_FLIP`` the same of the flipped image concatenated (6,144-d for RN50).
    """

    training_only_prefixes = (
        "text_encoder.",
        "prompt_learners.",
        "fusion.",
        "head_gem.classifier.",
        "head_proj.",
        "text_bank_",
    )

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        check_csdn_config(cfg)
        c = cfg.MODEL.CSDN
        num_classes = cfg.MODEL.HEADS.NUM_CLASSES
        if num_classes <= 0:
            raise ValueError("CSDN needs MODEL.HEADS.NUM_CLASSES > 0 (set from the training data)")
        clip = lookup(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.NAME, "MODEL.BACKBONE.NAME")(cfg)
        self.image_encoder = TwoStreamImageEncoder(
            clip.model.visual, clip.is_vit, c.QUIRKS.STEM_SINGLE_RELU
        )
        clip.model.visual = None  # moved into image_encoder; the text tower stays
        self.text_encoder = clip.requires_grad_(False)
        dim = clip.embed_dim
        self.prompt_learners = nn.ModuleList(
            IdentityPromptLearner(
                num_classes,
                clip.token_embedding,
                c.MSPL.TEMPLATE,
                c.MSPL.INIT_STD,
                cfg.MODEL.CLIP.CONTEXT_LENGTH,
            )
            for _ in range(2 if c.MSPL.ENABLED else 1)
        )
        self.fusion = None
        if c.SII.ENABLED:
            self.fusion = SemanticInformationIntegration(dim, c.SII.NAME, c.SII.DROPOUT)
        self.text_target = c.HSE.TEXT_TARGET
        self.i2t_loss = c.HSE.NAME
        self.weights = {
            "id": c.ID.WEIGHT,
            "triplet": c.TRIPLET.WEIGHT,
            "msel": c.MSEL.WEIGHT if c.MSEL.ENABLED else None,
            "hse_vis": c.HSE.VIS_WEIGHT,
            "hse_ir": c.HSE.IR_WEIGHT,
            "clipreid": c.HSE.CLIPREID.WEIGHT,
        }
        self.label_smoothing = c.HSE.CLIPREID.LABEL_SMOOTHING
        self.gather_loss_features = bool(c.DDP.GATHER_LOSS_FEATURES)
        self.num_instances = cfg.DATALOADER.NUM_INSTANCE
        self.test_flip = c.TEST_FLIP
        enc = self.image_encoder
        self.head_gem = BNClassifierHead(enc.global_dim, num_classes, pool=not enc.is_vit)
        self.head_proj = BNClassifierHead(enc.proj_dim, num_classes, pool=False)
        if enc.proj_dim != dim:
            raise ValueError(f"image projection {enc.proj_dim} != text embedding {dim}")
        self.register_buffer("text_bank_visible", torch.zeros(num_classes, dim))
        self.register_buffer("text_bank_infrared", torch.zeros(num_classes, dim))
        mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(cfg.MODEL.PIXEL_STD, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # ------------------------------------------------------------------ phases
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return self.head_proj.classifier.out_features

    def phase_parameters(self, phase: str) -> Iterator[Tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the modules trained in ``phase`` (one of :data:`PHASES`)."""
        if phase not in _PHASE_MODULES:
            raise KeyError(f"unknown CSDN phase '{phase}'; phases: {PHASES}")
        prefixes = _PHASE_MODULES[phase]
        for name, p in self.named_parameters():
            if name.startswith(prefixes):
                yield name, p

    def set_trainable(self, phase: str) -> None:
        """Freeze everything, then unfreeze the modules of ``phase`` (the text encoder, and
        CLIP's unused logit scale, stay frozen)."""
        self.requires_grad_(False)
        for _, p in self.phase_parameters(phase):
            p.requires_grad_(True)

    # ------------------------------------------------------------------ text side
    def text_features(self, labels: torch.Tensor, learner: int) -> torch.Tensor:
        """``[B, D]`` EOT features of the prompts of ``labels`` from learner 0 (visible / shared)
        or 1 (infrared)."""
        learner = min(learner, len(self.prompt_learners) - 1)
        prompts, eot = self.prompt_learners[learner](labels.to(self.device))
        return self.text_encoder.encode_text_embeddings(prompts, eot).global_feat

    def class_texts(self, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(visible, infrared) prompt text features of ``labels``; equal for a shared learner."""
        t_vis = self.text_features(labels, VISIBLE)
        t_ir = self.text_features(labels, INFRARED) if len(self.prompt_learners) > 1 else t_vis
        return t_vis, t_ir

    def text_targets(self, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """HSE targets (for visible images, for infrared images) of ``labels`` per TEXT_TARGET."""
        t_vis, t_ir = self.class_texts(labels)
        if self.text_target == "fused":
            fused = self.fusion(t_vis, t_ir)
            return fused, fused
        return t_vis, t_ir

    # ------------------------------------------------------------------ image side
    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.device, non_blocking=True) - self.pixel_mean) / self.pixel_std

    def encode_proj(self, images: torch.Tensor, modality: int) -> torch.Tensor:
        """``[B, D]`` projected features f_p of one modality's images (feature banks)."""
        args = (
            (self._normalise(images), None)
            if modality == VISIBLE
            else (None, self._normalise(images))
        )
        return self.image_encoder(*args).proj_feat

    def _test_feature(self, images: torch.Tensor, modality: int) -> torch.Tensor:
        args = (images, None) if modality == VISIBLE else (None, images)
        out = self.image_encoder(*args)
        _, bn, _ = self.head_gem(out.global_feat)
        return torch.cat([F.normalize(bn, dim=1), F.normalize(out.proj_feat, dim=1)], dim=1)

    @torch.no_grad()
    def inference(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Test features of an image batch (each modality through its own stem)."""
        images = self._normalise(batch["images"])
        modality = batch["modality"].to(self.device)
        dim = self.head_gem.bn.num_features + self.head_proj.bn.num_features
        out = images.new_empty(images.shape[0], dim * (2 if self.test_flip else 1))
        for m in (VISIBLE, INFRARED):
            sel = (modality == m).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            x = images[sel]
            feats = [self._test_feature(x, m)]
            if self.test_flip:
                feats.append(self._test_feature(x.flip(3), m))
            out[sel] = torch.cat(feats, dim=1)
        return {"image_feats": out}

    # ------------------------------------------------------------------ training
    def pool(self, x: torch.Tensor, blocks: int = 1) -> torch.Tensor:
        """Rows of a batch-pool loss: with ``GATHER_LOSS_FEATURES`` under DDP, every rank's
        ``x [blocks * n, ...]`` concatenated (block-major, the single-process row order; the
        gradient reaches this rank's rows); ``x`` itself otherwise or in a one-process run."""
        return all_gather_rows(x, blocks) if self.gather_loss_features else x

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if not self.training:
            return self.inference(batch)
        if "vis_feats" in batch:
            return self.prompt_losses(batch)
        if "feats" in batch:
            return self.fusion_losses(batch)
        return self.image_losses(batch)

    def prompt_losses(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Phase 1 (MsPL): image features vs their identities' prompt text features."""
        y = batch["targets"].to(self.device)
        t_vis, t_ir = self.class_texts(y)
        v, r = (batch[k].to(self.device) for k in ("vis_feats", "ir_feats"))
        v, r, t_vis, t_ir, y = (self.pool(x) for x in (v, r, t_vis, t_ir, y))
        feats = torch.cat([v, r]).float()
        texts, labels = torch.cat([t_vis, t_ir]).float(), torch.cat([y, y])
        return {
            "loss_mspl_i2t": supcon_loss(feats, texts, labels, labels),
            "loss_mspl_t2i": supcon_loss(texts, feats, labels, labels),
        }

    def fusion_losses(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Phase 2 (SII): image features vs the fused texts of their identities."""
        y = batch["targets"].to(self.device)
        feats = batch["feats"].to(self.device).float()
        t_vis = batch["class_text_vis"].to(self.device)[y]
        fused = self.fusion(t_vis, batch["class_text_ir"].to(self.device)[y])
        feats, fused, y = self.pool(feats), self.pool(fused), self.pool(y)
        return {
            "loss_sii_i2t": supcon_loss(feats, fused.float(), y, y),
            "loss_sii_t2i": supcon_loss(fused.float(), feats, y, y),
        }

    def image_losses(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Phase 3: ID + WRT (+ MSEL) + HSE on ``[visible views..., infrared]`` images.

        ``batch``: ``vis_images [B, V, 3, H, W]`` (V augmented views of each visible image),
        ``ir_images [B, 3, H, W]``, ``vis_targets, ir_targets [B]``. Rows of the features are
        view-major: ``[view 0 (B); ...; view V-1 (B); infrared (B)]``.
        """
        vis = batch["vis_images"]  # [B, V, 3, H, W]
        b, views = vis.shape[:2]
        vis = vis.transpose(0, 1).reshape(b * views, *vis.shape[2:])  # view-major blocks
        y_vis = batch["vis_targets"].to(self.device)
        y_ir = batch["ir_targets"].to(self.device)
        labels = torch.cat([y_vis] * views + [y_ir])
        out = self.image_encoder(self._normalise(vis), self._normalise(batch["ir_images"]))
        f_g, _, logits_g = self.head_gem(out.global_feat)
        f_p = out.proj_feat
        _, _, logits_p = self.head_proj(f_p)
        f_g, f_p, logits_g, logits_p = f_g.float(), f_p.float(), logits_g.float(), logits_p.float()
        w = self.weights
        losses = {
            "loss_id": w["id"]
            * (F.cross_entropy(logits_g, labels) + F.cross_entropy(logits_p, labels)),
        }
        losses.update(self._pool_losses(f_g, f_p, labels, views, torch.equal(y_vis, y_ir)))
        losses.update(self._image_to_text_losses(f_p, labels, b, views))
        return losses

    def _pool_losses(
        self, f_g: torch.Tensor, f_p: torch.Tensor, labels: torch.Tensor, views: int, paired: bool
    ) -> Dict[str, torch.Tensor]:
        """WRT triplet and MSEL on the GeM features ``f_g`` and projected features ``f_p``
        ``[(V + 1) B, D]``, over the global batch under DDP with GATHER_LOSS_FEATURES (blocks of
        ``views + 1`` rows per pair, kept block-major), this rank's batch otherwise."""
        w = self.weights
        pool_g, pool_p, pool_y = (self.pool(t, views + 1) for t in (f_g, f_p, labels))
        losses = {
            "loss_triplet": w["triplet"]
            * (wrt_triplet_loss(pool_g, pool_y) + wrt_triplet_loss(pool_p, pool_y)),
        }
        if w["msel"] is not None:
            if not paired:
                raise ValueError(
                    "MSEL (MODEL.CSDN.MSEL.ENABLED) needs same-identity pairs: "
                    "batch['ir_targets'] must equal batch['vis_targets'] row by row"
                )
            k, n = self.num_instances, pool_y.shape[0] // (views + 1)  # n: pairs in the pool
            pool_a, pool_ir = slice(0, n), slice(n * views, n * (views + 1))
            losses["loss_msel"] = w["msel"] * (
                msel_loss(pool_g[pool_a], pool_g[pool_ir], pool_y[pool_a], k)
                + msel_loss(pool_p[pool_a], pool_p[pool_ir], pool_y[pool_a], k)
            )
        return losses

    def _image_to_text_losses(
        self, f_p: torch.Tensor, labels: torch.Tensor, b: int, views: int
    ) -> Dict[str, torch.Tensor]:
        """Image-to-text CE of ``f_p [(V + 1) B, D]`` against the frozen text banks ``[N, D]``
        (raw dot products): HSE (visible view 0 and infrared images, weighted separately) or
        CLIP-ReID's label-smoothed CE over every image (``MODEL.CSDN.HSE.NAME``)."""
        w = self.weights
        bank_vis, bank_ir = self.text_bank_visible.float(), self.text_bank_infrared.float()
        view_a, ir = slice(0, b), slice(b * views, b * (views + 1))
        if self.i2t_loss == "hse":
            return {
                "loss_hse_vis": w["hse_vis"]
                * F.cross_entropy(f_p[view_a] @ bank_vis.t(), labels[view_a]),
                "loss_hse_ir": w["hse_ir"] * F.cross_entropy(f_p[ir] @ bank_ir.t(), labels[ir]),
            }
        logits = torch.cat([f_p[: b * views] @ bank_vis.t(), f_p[ir] @ bank_ir.t()])
        return {
            "loss_clipreid_i2t": w["clipreid"]
            * F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        }

    def state_summary(self) -> List[str]:
        """Names of the trainable modules (for logs)."""
        return sorted({n.split(".")[0] for n, p in self.named_parameters() if p.requires_grad})
