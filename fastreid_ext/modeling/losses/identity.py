"""IRRA's identity (ID) classification loss on image and text logits of a shared classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["identity_loss"]


def identity_loss(
    image_logits: torch.Tensor, text_logits: torch.Tensor, pids: torch.Tensor
) -> torch.Tensor:
    """Mean of the image and text identity cross-entropies (IRRA ``compute_id``).

    Args:
        image_logits: [B, C] classifier logits of the image features.
        text_logits: [B, C] classifier logits of the text features (same classifier).
        pids: [B] identity labels in [0, C).

    Returns:
        Scalar ``(CE(image_logits, pids) + CE(text_logits, pids)) / 2``, computed in float32.
    """
    if image_logits.dim() != 2 or image_logits.shape != text_logits.shape:
        raise ValueError(
            "identity_loss: image_logits and text_logits must both be [B, C], got "
            f"{tuple(image_logits.shape)} and {tuple(text_logits.shape)}"
        )
    if pids.shape != (image_logits.shape[0],):
        raise ValueError(
            f"identity_loss: pids must be [B] with B={image_logits.shape[0]}, "
            f"got {tuple(pids.shape)}"
        )
    pids = pids.long()
    return (
        F.cross_entropy(image_logits.float(), pids) + F.cross_entropy(text_logits.float(), pids)
    ) / 2
