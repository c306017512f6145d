"""CPCL's hybrid-level cross-modal matching (HCM) losses: PCM (prototypes) and ICPM (instances).

The paper names both losses (arXiv 2401.10011) but its formulas are not public; the forms here
follow cluster-contrast's memory loss (PCM) and CMPM / IRRA's SDM (ICPM), as documented in
projects/CPCL/README.md ("Design choices").
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode

from fastreid_ext.config import check_choice
from fastreid_ext.modeling.losses import similarity_distribution_matching

from ..config import ICPM_POSITIVES, PCM_NAMES

__all__ = ["pcm_loss", "icpm_positives", "icpm_loss", "hcm_losses"]


def _prototype_ce(x: torch.Tensor, memory: torch.Tensor, labels: torch.Tensor, tau: float):
    """Mean over labelled samples of ``-log softmax(normalize(x) @ memory^T / tau)[label]``,
    or ``None`` when no sample is labelled or the memory is empty."""
    valid = labels >= 0
    if not bool(valid.any()) or memory.shape[0] == 0:
        return None
    logits = F.normalize(x[valid].float(), dim=1) @ memory.t().float() / tau
    return F.cross_entropy(logits, labels[valid])


def pcm_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    image_memory: torch.Tensor,
    text_memory: torch.Tensor,
    tau: float = 0.05,
    name: str = "hybrid",
) -> torch.Tensor:
    """Prototypical contrastive matching.

    Args:
        image_feats, text_feats: ``[B, D]`` global features of the B pairs.
        image_labels, text_labels: ``[B]`` pseudo labels (``-1`` = outlier).
        image_memory, text_memory: ``[K_v, D]`` / ``[K_t, D]`` L2-normalised centroids.
        tau: temperature.
        name: "intra" (L_v2Mv + L_t2Mt), "cross" (L_t2Mv + L_v2Mt) or "hybrid" (all four).
    Returns:
        Mean of the terms that have labelled samples (each term a mean over those samples);
        a zero that still depends on the features when there is none.
    """
    check_choice("MODEL.CPCL.PCM.NAME", name, PCM_NAMES)
    terms = []
    if name in ("intra", "hybrid"):
        terms += [
            _prototype_ce(image_feats, image_memory, image_labels, tau),  # L_v2Mv
            _prototype_ce(text_feats, text_memory, text_labels, tau),  # L_t2Mt
        ]
    if name in ("cross", "hybrid"):
        terms += [
            _prototype_ce(text_feats, image_memory, image_labels, tau),  # L_t2Mv
            _prototype_ce(image_feats, text_memory, text_labels, tau),  # L_v2Mt
        ]
    terms = [t for t in terms if t is not None]
    if not terms:
        return 0.0 * (image_feats.float().sum() + text_feats.float().sum())
    return torch.stack(terms).mean()


def icpm_positives(
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    kind: str = "image",
    image_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``[B, B]`` bool matrix of ICPM positives.

    ``y_ij = 1`` if ``i == j``, if pairs i and j show the same image (``image_ids`` ``[B]``:
    captions of one image are pairing information, not an identity label, so they are always
    positives of each other), or if the pseudo labels chosen by ``kind`` (one of
    ``cpcl.config.ICPM_POSITIVES``) agree and are ``!= -1``. ``image_labels``, ``text_labels``: ``[B]``.
    """
    check_choice("MODEL.CPCL.ICPM.POSITIVES", kind, ICPM_POSITIVES)
    b = image_labels.shape[0]
    pos = torch.eye(b, dtype=torch.bool, device=image_labels.device)

    def same(y: torch.Tensor) -> torch.Tensor:
        return (y.view(-1, 1) == y.view(1, -1)) & (y.view(-1, 1) >= 0)

    if image_ids is not None:
        if image_ids.shape != (b,):
            raise ValueError(
                f"icpm_positives: image_ids must be [{b}], got {tuple(image_ids.shape)}"
            )
        ids = image_ids.to(pos.device)
        pos |= ids.view(-1, 1) == ids.view(1, -1)
    if kind in ("image", "either"):
        pos |= same(image_labels)
    if kind in ("text", "either"):
        pos |= same(text_labels)
    return pos


def icpm_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    positives: torch.Tensor,
    tau: float = 0.02,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Instance-level cross-modal projection matching (CMPM with pseudo-label positives).

    ``p_ij = softmax_j(s_ij)``, ``q_ij = y_ij / sum_k y_ik`` and
    ``L = mean_i KL(p_i || q_i)`` for image-to-text plus the same for text-to-image, with
    ``s_ij = cos(v_i, t_j) / tau`` when ``tau > 0`` or CMPM's projection
    ``s_ij = v_i . t_j / |t_j|`` (and ``t_i . v_j / |v_j|``) when ``tau == 0``.

    Args:
        image_feats, text_feats: ``[B, D]``.
        positives: ``[B, B]`` symmetric bool with a true diagonal (:func:`icpm_positives`).
    Returns:
        Scalar, sum of the two directions.
    """
    b = image_feats.shape[0]
    if positives.shape != (b, b):
        raise ValueError(f"icpm_loss: positives must be [{b}, {b}], got {tuple(positives.shape)}")
    if tau < 0:
        raise ValueError(f"icpm_loss: tau must be >= 0, got {tau}")
    v, t = image_feats.float(), text_feats.float()
    if tau > 0:
        i2t = F.normalize(v, dim=1) @ F.normalize(t, dim=1).t() / tau
        t2i = i2t.t()
    else:
        i2t = v @ F.normalize(t, dim=1).t()
        t2i = t @ F.normalize(v, dim=1).t()
    return similarity_distribution_matching(i2t, t2i, positives, eps)


def hcm_losses(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    image_memory: torch.Tensor,
    text_memory: torch.Tensor,
    cfg_cpcl: CfgNode,
    image_ids: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """The weighted HCM losses enabled in ``cfg_cpcl`` (``MODEL.CPCL``): ``loss_pcm`` if
    ``PCM.ENABLED``, ``loss_icpm`` if ``ICPM.ENABLED``; float32 scalars.

    Args:
        image_feats, text_feats: ``[B, D]`` global features (any float dtype, e.g. bf16 from an
            autocast forward).
        image_labels, text_labels: ``[B]`` pseudo labels (``-1`` = outlier).
        image_memory, text_memory: ``[K_v, D]`` / ``[K_t, D]`` prototypes.
        image_ids: ``[B]`` image id of each pair (ICPM positives), or None.
        cfg_cpcl: the ``MODEL.CPCL`` node.

    Autocast is disabled here and every input is cast to float32, so the losses are computed in
    float32 even inside a bf16/fp16 ``torch.autocast`` region (``.float()`` alone does not
    escape autocast: its matmuls would run in low precision again).
    """
    out: Dict[str, torch.Tensor] = {}
    with torch.autocast(device_type=image_feats.device.type, enabled=False):
        v, t = image_feats.float(), text_feats.float()
        mv, mt = image_memory.float(), text_memory.float()
        if cfg_cpcl.PCM.ENABLED:
            out["loss_pcm"] = cfg_cpcl.PCM.WEIGHT * pcm_loss(
                v, t, image_labels, text_labels, mv, mt, cfg_cpcl.PCM.TAU, cfg_cpcl.PCM.NAME
            )
        if cfg_cpcl.ICPM.ENABLED:
            pos = icpm_positives(image_labels, text_labels, cfg_cpcl.ICPM.POSITIVES, image_ids)
            out["loss_icpm"] = cfg_cpcl.ICPM.WEIGHT * icpm_loss(
                v, t, pos, cfg_cpcl.ICPM.TAU, cfg_cpcl.ICPM.EPS
            )
    return out
