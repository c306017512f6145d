"""CPCL's prototypical multi-modal memory (PMM): one centroid memory per modality, reset by the
pseudo-label hook every clustering and momentum-updated by the model after every training step
with the batches of all ranks."""

from __future__ import annotations

from typing import Mapping, Tuple

import torch
from fastreid.utils import comm
from torch import nn

from fastreid_ext.config import check_choice
from fastreid_ext.modeling.memory import PrototypicalMemory

from ..config import PMM_UPDATES

__all__ = ["PrototypicalMultiModalMemory", "gather_step"]


def gather_step(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of every rank, concatenated in rank order, with a single ``all_gather``.

    Args:
        image_feats, text_feats: ``[B, D]`` features of this rank's batch.
        image_labels, text_labels: ``[B]`` pseudo labels (``-1`` = outlier).
    Returns:
        ``(image_feats, text_feats, image_labels, text_labels)`` of ``B_total`` pairs, detached
        float32 ``[B_total, D]`` / int64 ``[B_total]`` on the input device (this rank's batch
        when not distributed).
    """
    parts = [image_feats.detach().float(), text_feats.detach().float()]
    parts += [image_labels.detach().long(), text_labels.detach().long()]
    if comm.get_world_size() == 1:
        return tuple(parts)
    device = parts[0].device
    gathered = comm.all_gather(tuple(p.cpu() for p in parts))
    return tuple(torch.cat([g[k] for g in gathered]).to(device) for k in range(4))


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[2B, D]``: ``a_0, b_0, a_1, b_1, ...`` of two ``[B, D]`` tensors."""
    return torch.stack([a, b], dim=1).reshape(-1, a.shape[1])


class PrototypicalMultiModalMemory(nn.Module):
    """The image memory ``M^v`` ``[K_v, D]`` (``.image``) and the text memory ``M^t``
    ``[K_t, D]`` (``.text``), two :class:`PrototypicalMemory` buffers (no gradient).

    * :meth:`reset` installs the centroids of a new clustering (K changes with every one).
    * :meth:`update` is the per-step momentum update in the rule ``name``
      (``MODEL.CPCL.PMM.UPDATE.NAME``): "standard" updates ``M^v`` with the image features and
      ``M^t`` with the text features of their labelled samples, in batch order; "multi_modal"
      updates each memory also with the paired other-modality feature (per pair the own feature
      first, both under that memory's label); "hard" updates once per cluster present, with its
      sample least similar to the centroid (cluster-contrast's ``CM_Hard``).
    * :meth:`resize_like` gives the buffers the shapes of a checkpoint's before it is loaded.

    Args:
        dim: feature dimension D.
        momentum: ``mu`` of ``M_y <- mu M_y + (1 - mu) x / |x|`` (``MODEL.CPCL.PMM.UPDATE``).
        name: the update rule, one of ``cpcl.config.PMM_UPDATES``.
    """

    def __init__(self, dim: int, momentum: float = 0.1, name: str = "standard") -> None:
        super().__init__()
        self.name = check_choice("MODEL.CPCL.PMM.UPDATE.NAME", name, PMM_UPDATES)
        self.image = PrototypicalMemory(dim, momentum)
        self.text = PrototypicalMemory(dim, momentum)

    @property
    def dim(self) -> int:
        return self.image.dim

    @torch.no_grad()
    def reset(self, image_centroids: torch.Tensor, text_centroids: torch.Tensor) -> None:
        """Replace ``M^v`` by ``image_centroids`` ``[K_v, D]`` and ``M^t`` by ``text_centroids``
        ``[K_t, D]`` (stored L2-normalised, float32; ``K = 0`` empties a memory)."""
        self.image.reset(image_centroids)
        self.text.reset(text_centroids)

    @torch.no_grad()
    def update(
        self,
        image_feats: torch.Tensor,
        text_feats: torch.Tensor,
        image_labels: torch.Tensor,
        text_labels: torch.Tensor,
        gather: bool = True,
    ) -> None:
        """Momentum-update both memories with one training batch, in float32 outside autocast.

        Args:
            image_feats, text_feats: ``[B, D]`` features of the B pairs (any float dtype).
            image_labels, text_labels: ``[B]`` pseudo labels (``-1``: that memory skips the pair).
            gather: gather the batches of all ranks first (one ``all_gather``, rank order), so
                every rank applies the same update and the memories stay identical.
        """
        step = (image_feats, text_feats, image_labels, text_labels)
        v, t, yv, yt = gather_step(*step) if gather else step
        with torch.autocast(device_type=self.image.features.device.type, enabled=False):
            if self.name == "multi_modal":
                # per pair: own-modality feature first, then the paired one; both under the label
                self.image.update(_interleave(v, t), yv.repeat_interleave(2), gather=False)
                self.text.update(_interleave(t, v), yt.repeat_interleave(2), gather=False)
                return
            hard = self.name == "hard"
            self.image.update(v, yv, gather=False, hard=hard)
            self.text.update(t, yt, gather=False, hard=hard)

    @torch.no_grad()
    def resize_like(self, state: Mapping[str, torch.Tensor], prefix: str) -> None:
        """Give each memory the ``[K, D]`` shape of ``state[prefix + "image.features"]`` /
        ``state[prefix + "text.features"]`` (zeros; absent keys leave a memory unchanged), so a
        checkpoint loader that skips tensors of another shape loads them."""
        for name, memory in (("image", self.image), ("text", self.text)):
            value = state.get(f"{prefix}{name}.features")
            if value is not None and value.dim() == 2 and value.shape[1] == memory.dim:
                memory.features = memory.features.new_zeros(value.shape)
