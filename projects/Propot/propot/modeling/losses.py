"""Propot's prototype-to-instance contrastive loss (eqs. 10-12)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["prototype_to_instance_loss"]


def prototype_to_instance_loss(
    prototypes: torch.Tensor,
    proto_ids: torch.Tensor,
    feats: torch.Tensor,
    pids: torch.Tensor,
    tau: float = 0.02,
    use_log: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """One modality's term of L_p2i (eq. 11 for images, eq. 12 for texts).

    For prototype ``p_i`` of identity ``L_i`` the softmax runs over the B instances of the batch,
    ``s_ib = softmax_b(cos(x_b, p_i) / tau)``, and the positives ``P(L_i)`` are the instances
    with ``pids == L_i``:

        L(L_i) = -(1 / |P(L_i)|) sum_{p in P(L_i)} log s_ip      (use_log; InfoNCE form)
        L(L_i) = -(1 / |P(L_i)|) sum_{p in P(L_i)} s_ip          (not use_log; as printed)

    Identities without instances in the batch have no positive and are skipped. Computed in
    float32.

    Args:
        prototypes: [M, d] final prototypes p_i of one modality.
        proto_ids: [M] identity label of each prototype.
        feats: [B, d] instance features of the same modality (v for p^v, t for p^t).
        pids: [B] identity labels of the instances.
        tau: temperature (``MODEL.PROPOT.P2I.TAU``).
        use_log: log-probability (True) or probability (False) (``MODEL.PROPOT.P2I.LOG``).
        reduction: ``"mean"`` over the identities with positives (the default, as
            ``MODEL.PROPOT.P2I.REDUCTION``) or ``"sum"`` (eq. 10 as printed).

    Returns:
        Scalar loss (0, attached to the graph, when no prototype has a positive).
    """
    if prototypes.dim() != 2 or feats.dim() != 2 or prototypes.shape[1] != feats.shape[1]:
        raise ValueError(
            "prototype_to_instance_loss: prototypes [M, d] and feats [B, d] expected, got "
            f"{tuple(prototypes.shape)} and {tuple(feats.shape)}"
        )
    if proto_ids.shape != prototypes.shape[:1] or pids.shape != feats.shape[:1]:
        raise ValueError(
            "prototype_to_instance_loss: proto_ids must be [M] and pids [B], got "
            f"{tuple(proto_ids.shape)} and {tuple(pids.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"prototype_to_instance_loss: tau must be > 0, got {tau}")
    if reduction not in ("sum", "mean"):
        raise ValueError(
            f"prototype_to_instance_loss: reduction must be 'sum' or 'mean', got '{reduction}'"
        )
    p = F.normalize(prototypes.float(), dim=1)
    x = F.normalize(feats.float(), dim=1)
    logits = p @ x.t() / tau  # [M, B]
    pos = (proto_ids.view(-1, 1) == pids.view(1, -1)).float()  # [M, B]
    num_pos = pos.sum(dim=1)
    log_prob = F.log_softmax(logits, dim=1)
    score = log_prob if use_log else log_prob.exp()
    per_id = -(score * pos).sum(dim=1) / num_pos.clamp(min=1)  # 0 for identities without positives
    if reduction == "sum":
        return per_id.sum()
    return per_id.sum() / (num_pos > 0).sum().clamp(min=1)
