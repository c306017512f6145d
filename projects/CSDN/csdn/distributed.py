"""CSDN under DDP: SyncBatchNorm for the image side (``MODEL.CSDN.DDP.SYNC_BN``).

The authors train on one GPU, so every train-mode BatchNorm of the image encoder and of the two
heads sees the whole batch (phase 3: 2 x P x K visible and P x K infrared images; the phase-2
image bank of the ``FUSION_BANK_TRAIN_MODE`` quirk: ``PHASE1.IMS_PER_BATCH`` images per
modality). With W ranks each rank sees 1 / W of it; torch's SyncBatchNorm computes the batch
statistics over all ranks instead. It is CUDA-only (its synchronised forward rejects CPU
tensors and DDP refuses CPU modules holding it), hence the explicit error on CPU.
"""

from __future__ import annotations

import torch
from fastreid.config import CfgNode
from torch import nn

from fastreid_ext.config import ConfigValueError

__all__ = [
    "SYNC_BN_MODULES",
    "convert_sync_batchnorm",
    "apply_sync_batchnorm",
    "count_batchnorm",
]

#: The CSDN submodules whose BatchNorm layers run in train mode (phase 3 and the phase-2 bank).
SYNC_BN_MODULES = ("image_encoder", "head_gem", "head_proj")


def convert_sync_batchnorm(model: nn.Module) -> int:
    """Replace every ``BatchNorm*d`` of :data:`SYNC_BN_MODULES` by ``torch.nn.SyncBatchNorm`` in
    place (same parameter and buffer tensors, same state-dict keys); the text side is left
    alone. Returns the number of SyncBatchNorm layers in those modules afterwards."""
    count = 0
    for name in SYNC_BN_MODULES:
        sub = getattr(model, name)
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(sub))
        count += sum(isinstance(m, nn.SyncBatchNorm) for m in getattr(model, name).modules())
    return count


def apply_sync_batchnorm(model: nn.Module, cfg: CfgNode, world_size: int) -> int:
    """Convert the image side to SyncBatchNorm when ``MODEL.CSDN.DDP.SYNC_BN`` is on and the run
    has more than one process (a one-process run is left untouched). Returns the number of
    SyncBatchNorm layers (0 when nothing was converted).

    Raises:
        ConfigValueError: SYNC_BN on, several processes, model not on CUDA.
    """
    if world_size <= 1 or not cfg.MODEL.CSDN.DDP.SYNC_BN:
        return 0
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigValueError(
            "MODEL.CSDN.DDP.SYNC_BN",
            True,
            f"False when the model is on '{device}' with several processes: "
            "torch.nn.SyncBatchNorm synchronises CUDA tensors only and DDP rejects CPU modules "
            "holding it (with False, each rank's BatchNorm sees its "
            f"1/{world_size} share of the batch)",
        )
    return convert_sync_batchnorm(model)


def count_batchnorm(module: nn.Module) -> int:
    """Number of BatchNorm layers (plain or synchronised) in ``module``."""
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
