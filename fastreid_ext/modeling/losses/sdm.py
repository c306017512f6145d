"""IRRA's Similarity Distribution Matching (SDM) loss for text-image pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sdm_loss", "similarity_distribution_matching"]


def _check_pair_batch(
    name: str, image_feats: torch.Tensor, text_feats: torch.Tensor, pids: torch.Tensor
) -> None:
    if image_feats.dim() != 2 or text_feats.dim() != 2 or image_feats.shape != text_feats.shape:
        raise ValueError(
            f"{name}: image_feats and text_feats must both be [B, D], got "
            f"{tuple(image_feats.shape)} and {tuple(text_feats.shape)}"
        )
    if pids.shape != (image_feats.shape[0],):
        raise ValueError(
            f"{name}: pids must be [B] with B={image_feats.shape[0]}, got {tuple(pids.shape)}"
        )


def sdm_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    tau: float = 0.02,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Similarity Distribution Matching (IRRA ``compute_sdm``; Propot eqs. 7-9).

    With L2-normalised features, ``s_ij = cos(v_i, t_j) / tau``, ``p_ij = softmax_j(s_ij)`` and the
    true matching distribution ``q_ij = y_ij / sum_k y_ik`` where ``y_ij = 1[pid_i == pid_j]``:

        L_i2t = mean_i sum_j p_ij (log p_ij - log(q_ij + eps)),

    and L_t2i is the same with the transposed similarity. Computed in float32.

    Args:
        image_feats: [B, D] global image features (any scale; normalised here).
        text_feats: [B, D] global text features of the same B pairs.
        pids: [B] identity labels of the pairs (repeated identities are positives).
        tau: temperature (IRRA: 0.02, i.e. logit scale 50).
        eps: added to q inside the logarithm (IRRA: 1e-8).

    Returns:
        Scalar ``L_i2t + L_t2i`` (the two directions are summed, not averaged).
    """
    _check_pair_batch("sdm_loss", image_feats, text_feats, pids)
    if tau <= 0:
        raise ValueError(f"sdm_loss: tau must be > 0, got {tau}")
    v = F.normalize(image_feats.float(), dim=1)
    t = F.normalize(text_feats.float(), dim=1)
    sim_i2t = v @ t.t() / tau  # [B, B]

    same = pids.view(-1, 1) == pids.view(1, -1)
    return similarity_distribution_matching(sim_i2t, sim_i2t.t(), same, eps)


def similarity_distribution_matching(
    i2t_logits: torch.Tensor, t2i_logits: torch.Tensor, positives: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """``sum over both directions of mean_i KL(softmax_j(logits_ij) || q_i)`` with
    ``q_ij = y_ij / sum_k y_ik``: the matching core shared by SDM and CPCL's ICPM.

    Args:
        i2t_logits, t2i_logits: ``[B, B]`` image-to-text and text-to-image logits.
        positives: ``[B, B]`` symmetric bool (or 0/1) matrix ``y`` with at least one positive per row.
        eps: added to ``q`` inside the logarithm.
    """
    y = positives.float()
    log_q = torch.log(y / y.sum(dim=1, keepdim=True) + eps)  # symmetric labels: one q
    loss = i2t_logits.new_zeros(())
    for logits in (i2t_logits, t2i_logits):
        log_p = F.log_softmax(logits, dim=1)
        loss = loss + (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return loss
