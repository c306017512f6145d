"""Feature and text banks of CSDN's phases, and a loader over in-memory tensors.

Distributed runs: the image-bank pass is sharded (each rank forwards ``PHASE1.IMS_PER_BATCH /
world`` pairs per step; the train-mode BatchNorm of the phase-2 quirk normalises over all ranks'
pairs with ``MODEL.CSDN.DDP.SYNC_BN``, as the authors' single-GPU batch of 32, and over each
rank's share without it) and gathered so every rank holds the whole bank; phases 1-2 then
compute SupCon over the whole batch (``MODEL.CSDN.DDP.GATHER_LOSS_FEATURES``) or over each
rank's share.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.utils import comm
from torch import nn

from fastreid_ext.config import ConfigValueError
from fastreid_ext.data.samplers import EpochBatchSampler
from fastreid_ext.data.vi import build_vi_loader, build_vi_sampler, build_vi_train_set
from fastreid_ext.data.vi.base import INFRARED, VISIBLE
from fastreid_ext.utils.atomic_io import atomic_torch_save
from fastreid_ext.utils.progress import progress

__all__ = [
    "TensorBank",
    "TensorBatchLoader",
    "PairBankSampler",
    "ImageBankCache",
    "extract_pair_bank",
    "extract_text_bank",
    "image_bank_train_mode",
    "mode",
]

logger = logging.getLogger(__name__)


class TensorBank:
    """A training set held as equal-length tensors (``{"name": [M, ...]}``); batches index them.
    ``shared`` tensors (e.g. class texts ``[N, D]``) are passed whole with every batch."""

    def __init__(
        self, tensors: Dict[str, torch.Tensor], shared: Optional[Dict[str, torch.Tensor]] = None
    ) -> None:
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"TensorBank tensors must have the same length, got {sizes}")
        self.tensors = tensors
        self.shared = dict(shared or {})

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
            batch = {k: v[index] for k, v in self.bank.tensors.items()}
            batch.update(self.bank.shared)
            yield batch


class PairBankSampler:
    """The pairs of one epoch of a cross-modal identity sampler, cut into global batches of
    ``batch_size`` (the authors' ``stage1_batch_size`` loader over the sampler's index lists, last
    incomplete batch dropped); rank r of W takes the r-th ``batch_size / W`` pairs of each.

    Attributes:
        pairs: ``[M, 2]`` (visible index, infrared index), M = a multiple of ``batch_size``.
    """

    def __init__(
        self, global_batches: List[np.ndarray], batch_size: int, rank: int = 0, world: int = 1
    ) -> None:
        if batch_size < 1 or batch_size % world != 0:
            raise ConfigValueError(
                "MODEL.CSDN.PHASE1.IMS_PER_BATCH",
                batch_size,
                f"a number >= 1 divisible by the world size {world}",
            )
        pairs = np.concatenate(global_batches)
        if len(pairs) < batch_size:
            raise ValueError(
                f"the image bank has {len(pairs)} pairs, fewer than one batch "
                f"(MODEL.CSDN.PHASE1.IMS_PER_BATCH={batch_size})"
            )
        self.batch_size, self.per_rank, self.rank = batch_size, batch_size // world, rank
        self.pairs = pairs[: len(pairs) // batch_size * batch_size]

    def __len__(self) -> int:
        return len(self.pairs) // self.batch_size

    def positions(self, step: int) -> torch.Tensor:
        """Bank rows of this rank's share of global batch ``step``, ``[batch_size / W]``."""
        start = step * self.batch_size + self.rank * self.per_rank
        return torch.arange(start, start + self.per_rank)

    def __iter__(self) -> Iterator[List[List[int]]]:
        for step in range(len(self)):
            yield self.pairs[self.positions(step).numpy()].tolist()


def image_bank_train_mode(cfg: CfgNode, phase: int) -> bool:
    """Whether the image bank of ``phase`` (0 prompt, 1 fusion) is extracted with the image
    encoder in train mode: phase 2 with ``MODEL.CSDN.QUIRKS.FUSION_BANK_TRAIN_MODE`` (the
    authors' model is left in train mode after phase 1); phase 1 never (CLIP's running stats)."""
    return phase == 1 and bool(cfg.MODEL.CSDN.QUIRKS.FUSION_BANK_TRAIN_MODE)


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
    """CSDN's phase-1 / phase-2 image bank: one pass of the cross-modal identity sampler (P from
    ``SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE``, as the authors' sampler) with the test
    transform, forwarded in batches of ``MODEL.CSDN.PHASE1.IMS_PER_BATCH`` pairs (the authors'
    ``stage1_batch_size``); each pair gives the projected feature f_p of its visible and of its
    infrared image (each modality forwarded on its own, as the authors' code does).

    Args:
        model: the CSDN module (not DDP-wrapped).
        seed: sampler seed (identity draw with replacement inside identities).
        train_mode: run the image encoder in train mode (BatchNorm batch statistics; running
            statistics are updated) -- the authors' phase-2 extraction.

    Returns:
        visible features ``[M, D]`` and infrared features ``[M, D]`` (float32, CPU), labels
        ``[M]`` (int64, CPU), identical on every rank; M = the sampler's
        ``(max(#visible, #infrared) // (P K) + 1) * P K`` pairs cut down to a multiple of
        ``PHASE1.IMS_PER_BATCH``.
    """
    pairs = build_vi_train_set(cfg, is_train=False)
    sampler = build_vi_sampler(cfg, pairs, seed=seed)
    sampler.set_epoch(0)
    batches = PairBankSampler(
        sampler.global_batches(),
        cfg.MODEL.CSDN.PHASE1.IMS_PER_BATCH,
        comm.get_rank(),
        comm.get_world_size(),
    )
    loader = build_vi_loader(cfg, pairs, batches)
    positions, vis, ir, labels = [], [], [], []
    with mode(model.image_encoder, train_mode):
        for step, batch in enumerate(progress(loader, "CSDN image bank")):
            positions.append(batches.positions(step))
            vis.append(model.encode_proj(batch["vis_images"][:, 0], VISIBLE).float().cpu())
            ir.append(model.encode_proj(batch["ir_images"], INFRARED).float().cpu())
            labels.append(batch["vis_targets"].long())
    total = len(batches.pairs)
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


class ImageBankCache:
    """The image banks of phases 1 and 2, extracted at the phase start and cached in
    ``OUTPUT_DIR/csdn_bank_phase{1,2}.pt`` with the sampler seed and a checksum of the (frozen)
    image encoder, so a run resumed inside the phase trains on the very same bank (the phase-2
    pass changes BatchNorm statistics: it must not run twice). Files are written atomically."""

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg

    def path(self, phase: int) -> str:
        """The cache file of ``phase`` (0 prompt, 1 fusion)."""
        return os.path.join(self.cfg.OUTPUT_DIR, f"csdn_bank_phase{phase + 1}.pt")

    def seed(self, phase: int) -> int:
        """Sampler seed of the bank of ``phase``, from ``SEED``."""
        seq = np.random.SeedSequence([max(self.cfg.SEED, 0), 1000 + phase])
        return int(seq.generate_state(1)[0])

    def get(
        self, model, phase: int, resumed: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(visible [M, D], infrared [M, D], labels [M])`` of ``phase``'s bank: read back from
        the cache when ``resumed`` (the run continues inside the phase) and the cache matches
        the model and seed, extracted (:func:`extract_pair_bank`) and cached otherwise.
        ``model``: the CSDN module (not DDP-wrapped)."""
        seed = self.seed(phase)
        checksum = float(sum(p.double().sum() for p in model.image_encoder.parameters()))
        path = self.path(phase)
        if resumed and os.path.isfile(path):
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["seed"] == seed and cached["checksum"] == checksum:
                logger.info("CSDN phase %d: image bank read from %s", phase + 1, path)
                return cached["visible"], cached["infrared"], cached["labels"]
            logger.warning("Ignoring %s: it was extracted by a different model / seed", path)
        elif resumed:
            logger.warning("No cached image bank %s: extracting it again", path)
        v, r, y = extract_pair_bank(model, self.cfg, seed, image_bank_train_mode(self.cfg, phase))
        if comm.is_main_process() and self.cfg.OUTPUT_DIR:
            os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
            bank = {"visible": v, "infrared": r, "labels": y, "seed": seed, "checksum": checksum}
            atomic_torch_save(bank, path)
        return v, r, y

    def drop_before(self, phase: int) -> None:
        """Delete the cached banks of the phases before ``phase`` (main process): ``--resume``
        continues from a checkpoint of ``phase``, never inside them."""
        for earlier in range(phase):
            path = self.path(earlier)
            if comm.is_main_process() and os.path.isfile(path):
                os.remove(path)
                logger.info("Deleted the cached image bank %s (its phase is over)", path)
