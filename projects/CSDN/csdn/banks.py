"""Feature and text banks of CSDN's phases, and a loader over in-memory tensors."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.utils import comm
from torch import nn

from fastreid_ext.data.samplers import EpochBatchSampler
from fastreid_ext.data.vi import build_vi_loader, build_vi_sampler, build_vi_train_set
from fastreid_ext.data.vi.base import INFRARED, VISIBLE
from fastreid_ext.utils.progress import progress

__all__ = ["TensorBank", "TensorBatchLoader", "extract_pair_bank", "extract_text_bank", "mode"]


class TensorBank:
    """A training set held as equal-length tensors (``{"name": [M, ...]}``); batches index them."""

    def __init__(self, tensors: Dict[str, torch.Tensor]) -> None:
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"TensorBank tensors must have the same length, got {sizes}")
        self.tensors = tensors

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]


class TensorBatchLoader:
    """Yields ``{name: tensor[batch]}`` for the batches of an epoch batch sampler (no workers)."""

    def __init__(self, bank: TensorBank, batch_sampler: EpochBatchSampler) -> None:
        self.bank, self.batch_sampler = bank, batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        for idx in self.batch_sampler:
            index = torch.as_tensor(idx, dtype=torch.long)
            yield {k: v[index] for k, v in self.bank.tensors.items()}


@contextmanager
def mode(module: nn.Module, train: bool):
    """Put ``module`` in train / eval mode for a block, restoring each submodule's mode."""
    saved = [(m, m.training) for m in module.modules()]
    module.train(train)
    try:
        yield module
    finally:
        for m, was in saved:
            m.training = was


def _gather_rows(positions: List[torch.Tensor], rows: List[torch.Tensor], total: int):
    """Reassemble per-rank ``(positions, rows)`` into ``[total, ...]`` on every rank."""
    local = (torch.cat(positions), torch.cat(rows))
    parts = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
    out = torch.empty(total, *local[1].shape[1:], dtype=local[1].dtype)
    seen = torch.zeros(total, dtype=torch.bool)
    for pos, r in parts:
        out[pos] = r
        seen[pos] = True
    if not bool(seen.all()):
        raise RuntimeError("feature bank: some positions were not extracted by any rank")
    return out


@torch.no_grad()
def extract_pair_bank(
    model, cfg: CfgNode, seed: int, train_mode: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSDN's phase-1 / phase-2 image bank: one pass of the cross-modal identity sampler with the
    test transform; each pair gives the projected feature f_p of its visible and of its
    infrared image (each modality forwarded on its own, as the authors' code does).

    Args:
        model: the CSDN module (not DDP-wrapped).
        seed: sampler seed (identity draw with replacement inside identities).
        train_mode: run the image encoder in train mode (BatchNorm batch statistics; running
            statistics are updated) -- the authors' phase-2 extraction.

    Returns:
        visible features ``[M, D]``, infrared features ``[M, D]``, labels ``[M]`` (float32, CPU),
        identical on every rank; M = (max(#visible, #infrared) // (P K) + 1) * P K.
    """
    pairs = build_vi_train_set(cfg, is_train=False)
    sampler = build_vi_sampler(cfg, pairs, seed=seed)
    sampler.set_epoch(0)
    loader = build_vi_loader(cfg, pairs, sampler)
    per_rank, world_batch = sampler.batch_size, sampler.total_batch_size
    first = comm.get_rank() * per_rank
    positions, vis, ir, labels = [], [], [], []
    with mode(model.image_encoder, train_mode):
        for b, batch in enumerate(progress(loader, "CSDN image bank")):
            n = batch["ir_images"].shape[0]
            positions.append(b * world_batch + first + torch.arange(n))
            vis.append(model.encode_proj(batch["vis_images"][:, 0], VISIBLE).float().cpu())
            ir.append(model.encode_proj(batch["ir_images"], INFRARED).float().cpu())
            labels.append(batch["vis_targets"])
    total = len(sampler) * world_batch
    v = _gather_rows(positions, vis, total)
    r = _gather_rows(positions, ir, total)
    y = _gather_rows(positions, labels, total)
    return v, r, y


@torch.no_grad()
def extract_text_bank(
    model, batch_size: int = 32, fusion_train_mode: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """HSE targets of every class ``([N, D] for visible images, [N, D] for infrared images)``,
    computed in batches of ``batch_size`` labels; ``fusion_train_mode`` keeps SII's dropout on
    (the authors' extraction). Deterministic given the torch RNG state."""
    outs_vis, outs_ir = [], []
    with mode(model, False):
        if model.fusion is not None:
            model.fusion.train(fusion_train_mode)
        for start in range(0, model.num_classes, batch_size):
            labels = torch.arange(start, min(start + batch_size, model.num_classes))
            t_vis, t_ir = model.text_targets(labels.to(model.device))
            outs_vis.append(t_vis.float())
            outs_ir.append(t_ir.float())
    return torch.cat(outs_vis), torch.cat(outs_ir)
