"""CSDN losses: CLIP-ReID's supervised contrastive loss, AGW's weighted regularised triplet,
and CSDN's modality-gap loss MSEL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["supcon_loss", "euclidean_distances", "wrt_triplet_loss", "msel_loss"]


def supcon_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
) -> torch.Tensor:
    """Supervised contrastive loss on raw dot products, temperature 1 (CLIP-ReID stage 1).

    ``-1/N sum_i 1/|P(i)| sum_{p in P(i)} log softmax_j(a_i . c_j)[p]`` with
    ``P(i) = {j : candidate_labels[j] == anchor_labels[i]}``; anchors ``[N, D]``, candidates
    ``[M, D]``. Every anchor needs at least one positive candidate.
    """
    logits = anchors @ candidates.t()
    positive = (anchor_labels[:, None] == candidate_labels[None, :]).to(logits.dtype)
    if bool((positive.sum(1) == 0).any()):
        raise ValueError("supcon_loss: an anchor has no candidate with its label")
    log_prob = logits.log_softmax(dim=1)
    return -((positive * log_prob).sum(1) / positive.sum(1)).mean()


def euclidean_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` Euclidean distances, ``sqrt(max(d^2, 1e-12))`` (AGW's pdist)."""
    d2 = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * (x @ y.t())
    return d2.clamp(min=1e-12).sqrt()


def _softmax_weights(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    top = (dist * mask).max(dim=1, keepdim=True).values
    e = torch.exp(dist - top) * mask
    return e / (e.sum(dim=1, keepdim=True) + 1e-6)


def wrt_triplet_loss(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weighted regularised triplet (AGW): for each anchor, the softmax(d)-weighted mean distance
    to its positives (self included) P and the softmax(-d)-weighted mean to its negatives N;
    loss = mean(softplus(P - N)) (``SoftMarginLoss(N - P, 1)``). feats ``[B, D]``, labels ``[B]``."""
    dist = euclidean_distances(feats, feats)
    pos = (labels[:, None] == labels[None, :]).to(dist.dtype)
    neg = 1.0 - pos
    d_ap, d_an = dist * pos, dist * neg
    furthest_positive = (d_ap * _softmax_weights(d_ap, pos)).sum(1)
    closest_negative = (d_an * _softmax_weights(-d_an, neg)).sum(1)
    return F.softplus(furthest_positive - closest_negative).mean()


def msel_loss(
    vis: torch.Tensor, ir: torch.Tensor, labels: torch.Tensor, num_pos: int
) -> torch.Tensor:
    """Modality-gap loss (CSDN HEAD's MSEL) on paired batches ``vis, ir [N, D]`` whose i-th rows
    share ``labels[i]``.

    For each anchor: intra = mean of the ``num_pos - 1`` largest same-label distances in its own
    modality (self excluded); cross = mean distance to the same-label items of the other
    modality; loss = mean over both modalities of mean((cross - intra)^2).
    """
    if num_pos < 2:
        raise ValueError(f"msel_loss needs num_pos >= 2 (K images per identity), got {num_pos}")
    same = (labels[:, None] == labels[None, :]).to(vis.dtype)
    total = vis.new_zeros(())
    for own, other in ((vis, ir), (ir, vis)):
        intra = (euclidean_distances(own, own) * same).topk(num_pos - 1, dim=1).values.mean(1)
        cross = (euclidean_distances(own, other) * same).sum(1) / same.sum(1)
        total = total + ((cross - intra) ** 2).mean()
    return total / 2
