"""Per-step momentum update of CPCL's prototypical multi-modal memory (PMM), all ranks at once."""

from __future__ import annotations

import torch
from fastreid.utils import comm

from fastreid_ext.modeling.memory import PrototypicalMemory

__all__ = ["PMM_MODES", "gather_step", "update_memories"]

#: "standard": M^v with the image features and M^t with the text features of their labelled
#: samples, in batch order; "multi_modal": each memory also with the paired other-modality
#: feature (image then caption of each pair, both under that memory's label); "hard": once per
#: cluster present, with its sample least similar to the centroid (cluster-contrast CM_Hard).
PMM_MODES = ("standard", "multi_modal", "hard")


def gather_step(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
):
    """The batch of every rank, concatenated in rank order, with a single ``all_gather``.

    Args:
        image_feats, text_feats: ``[B, D]`` features of this rank's batch.
        image_labels, text_labels: ``[B]`` pseudo labels (``-1`` = outlier).
    Returns:
        ``(image_feats, text_feats, image_labels, text_labels)`` of ``B_total`` pairs, float32 /
        int64 on the input device (unchanged when not distributed).
    """
    parts = [image_feats.detach().float(), text_feats.detach().float()]
    parts += [image_labels.detach().long(), text_labels.detach().long()]
    if comm.get_world_size() == 1:
        return tuple(parts)
    device = parts[0].device
    gathered = comm.all_gather(tuple(p.cpu() for p in parts))
    return tuple(torch.cat([g[k] for g in gathered]).to(device) for k in range(4))


def update_memories(
    image_memory: PrototypicalMemory,
    text_memory: PrototypicalMemory,
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    mode: str = "standard",
    gather: bool = True,
) -> None:
    """Momentum-update both memories with one training batch (``CPCL.PMM.MODE``).

    Args:
        image_memory, text_memory: ``M^v`` ``[K_v, D]`` and ``M^t`` ``[K_t, D]``.
        image_feats, text_feats: ``[B, D]`` features of the B pairs (detached).
        image_labels, text_labels: ``[B]`` pseudo labels (``-1``: that memory skips the pair).
        mode: one of :data:`PMM_MODES`.
        gather: gather the batches of all ranks first (one ``all_gather``), so every rank
            applies the same update and the memories stay identical.
    """
    if mode not in PMM_MODES:
        raise ValueError(f"CPCL.PMM.MODE must be one of {PMM_MODES}, got {mode!r}")
    v, t, yv, yt = (
        gather_step(image_feats, text_feats, image_labels, text_labels)
        if gather
        else (image_feats, text_feats, image_labels, text_labels)
    )
    hard = mode == "hard"
    if mode == "multi_modal":
        # per pair: own-modality feature first, then the paired one; both under the label
        image_memory.update(_interleave(v, t), yv.repeat_interleave(2), gather=False)
        text_memory.update(_interleave(t, v), yt.repeat_interleave(2), gather=False)
        return
    image_memory.update(v, yv, gather=False, hard=hard)
    text_memory.update(t, yt, gather=False, hard=hard)


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[2B, D]``: ``a_0, b_0, a_1, b_1, ...`` of two ``[B, D]`` tensors."""
    return torch.stack([a, b], dim=1).reshape(-1, a.shape[1])
