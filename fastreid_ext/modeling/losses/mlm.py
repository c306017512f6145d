"""IRRA's masked-language-modelling (IRR) loss over the vocabulary scores of every position."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mlm_loss"]


def mlm_loss(scores: torch.Tensor, labels: torch.Tensor, ignore_index: int = 0) -> torch.Tensor:
    """Cross-entropy over the labelled positions of a batch of sequences (IRRA ``compute_mlm``).

    Equal to ``F.cross_entropy(scores.reshape(-1, V), labels.reshape(-1), ignore_index=...)`` when
    at least one position is labelled; when none is, returns 0 attached to the graph of ``scores``
    (``F.cross_entropy`` would return NaN). No host-device synchronisation.

    Args:
        scores: [B, L, V] vocabulary logits.
        labels: [B, L] target ids; ``ignore_index`` marks positions without a target.
        ignore_index: label value to ignore (IRRA: 0, see ``fastreid_ext.text.MLM_IGNORE_INDEX``).

    Returns:
        Scalar mean cross-entropy over labelled positions, computed in float32.
    """
    if scores.dim() != 3 or labels.shape != scores.shape[:2]:
        raise ValueError(
            "mlm_loss: scores must be [B, L, V] and labels [B, L], got "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    flat_labels = labels.reshape(-1).long()
    total = F.cross_entropy(
        scores.reshape(-1, scores.shape[-1]).float(),
        flat_labels,
        ignore_index=ignore_index,
        reduction="sum",
    )
    count = (flat_labels != ignore_index).sum().clamp(min=1)
    return total / count
