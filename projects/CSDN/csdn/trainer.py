"""``CSDNPhasedTrainer``: CSDN's three training phases in one resumable run of train_net.py."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch
from fastreid.config import CfgNode
from fastreid.utils import comm
from torch.utils.data import Dataset

from fastreid_ext.data.samplers import EpochBatchSampler
from fastreid_ext.data.vi import (
    CrossModalPairSet,
    build_vi_loader,
    build_vi_sampler,
    build_vi_train_set,
)
from fastreid_ext.engine.distributed import unwrap_model
from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.registry import TRAINER_REGISTRY

from .banks import TensorBank, TensorBatchLoader
from .distributed import apply_sync_batchnorm
from .hooks import CSDNPhaseHook
from .phases import PhasePlan, PhaseSchedule, build_phase_optimizer

__all__ = ["CSDNPhasedTrainer"]

logger = logging.getLogger(__name__)


@TRAINER_REGISTRY.register()
class CSDNPhasedTrainer(ExtTrainer):
    """Runs CSDN's phases in order within one ``tools/train_net.py`` invocation:

    1. **prompt** (MsPL): SupCon between an image bank and the prompt texts; only the prompt
       learners train (Adam, ``MODEL.CSDN.PHASE1``, timm cosine).
    2. **fusion** (SII): a second image bank against the fused class texts; only SII trains
       (``PHASE2``).
    3. **image** (HSE): the stems, trunk and heads train on P x K visible-infrared batches with
       ``SOLVER`` against the frozen text bank, evaluated every ``TEST.EVAL_PERIOD`` phase-3
       epochs.

    The phases lie end to end on one epoch axis (:class:`PhasePlan`); each has its own LR
    schedule (:class:`PhaseSchedule`, through the shared ``LRScheduleHook``). :class:`CSDNPhaseHook`
    enters a phase (frozen modules, fresh optimizer, DDP wrapper) and installs its data with
    ``set_train_set``; its state (the phase) is checkpointed, so ``--resume`` continues in any
    phase and reproduces an uninterrupted run exactly.

    Distributed training (``MODEL.CSDN.DDP``): the image side's BatchNorm layers become
    SyncBatchNorm (``SYNC_BN``, CUDA) and the batch-pool losses gather every rank's rows
    (``GATHER_LOSS_FEATURES``). DDP is built by ``create_ddp_model`` and so follows
    ``TRAINER.BROADCAST_BUFFERS``; the buffers that can differ between ranks are copied from rank
    0 where they can diverge (the hook, and :meth:`evaluate`: the rank-sharded evaluation then
    encodes every test image with rank 0's buffers, the ones checkpointed).
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.plan = PhasePlan(cfg)
        super().__init__(cfg)
        self.checkpointer.add_save_callback(self.phase_hook.drop_finished_banks)
        # before the phase's DDP wrapper is built (DDP inspects SyncBatchNorm layers)
        n = apply_sync_batchnorm(unwrap_model(self.model), cfg, comm.get_world_size())
        if n:
            logger.info("CSDN: %d BatchNorm layers of the image side synchronised (SYNC_BN)", n)
        self.phase_hook.enter(self.plan.phase_of(0))

    # ------------------------------------------------------------------ data
    @classmethod
    def build_train_set(cls, cfg: CfgNode) -> Dataset:
        """Visible-infrared training pairs of ``DATASETS.NAMES`` with the train transforms."""
        return build_vi_train_set(cfg, is_train=True)

    @classmethod
    def build_train_loader(
        cls,
        cfg: CfgNode,
        train_set: Optional[Dataset] = None,
        sampler: Optional[EpochBatchSampler] = None,
    ):
        """Image pairs: the P x K cross-modal sampler; feature banks: in-memory batches."""
        if train_set is None:
            train_set = cls.build_train_set(cfg)
        if isinstance(train_set, TensorBank):
            if sampler is None:
                raise ValueError("a TensorBank training set needs an explicit batch sampler")
            return TensorBatchLoader(train_set, sampler)
        if not isinstance(train_set, CrossModalPairSet):
            raise TypeError(f"CSDNPhasedTrainer cannot load a {type(train_set).__name__}")
        return build_vi_loader(cfg, train_set, sampler or build_vi_sampler(cfg, train_set))

    def set_train_set(self, train_set: Dataset, sampler: Optional[EpochBatchSampler] = None):
        super().set_train_set(train_set, sampler)
        if hasattr(self, "image_train_set"):
            self.max_iter = self.total_iterations()

    def total_iterations(self) -> int:
        """Iterations of the whole run: banks hold one sampler pass of pairs cut to a multiple of
        ``PHASE1.IMS_PER_BATCH`` (phase 1) or twice that many features (phase 2); phase 3 runs
        the sampler's batches."""
        c, (e1, e2, e3) = self.cfg.MODEL.CSDN, self.plan.epochs
        batches = len(build_vi_sampler(self.cfg, self.image_train_set))
        sampled = batches * self.cfg.SOLVER.IMS_PER_BATCH
        pairs = sampled // c.PHASE1.IMS_PER_BATCH * c.PHASE1.IMS_PER_BATCH
        return (
            e1 * (pairs // c.PHASE1.IMS_PER_BATCH)
            + e2 * (2 * pairs // c.PHASE2.IMS_PER_BATCH)
            + e3 * batches
        )

    # ------------------------------------------------------------------ phases
    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer of the first phase (:class:`CSDNPhaseHook` builds one per phase)."""
        return build_phase_optimizer(cfg, unwrap_model(model), PhasePlan(cfg).phase_of(0))

    def num_epochs(self) -> int:
        """The three phases' epochs."""
        return self.plan.total

    def build_hooks(self) -> List[Any]:
        """The phase hook first (a phase's optimizer and data are in place before any other
        hook's ``before_epoch``), then the shared hooks with the phases' LR schedule."""
        self.image_train_set = self.train_set
        self.max_iter = self.total_iterations()
        self.schedule = PhaseSchedule(self.cfg, self.plan)
        self.phase_hook = CSDNPhaseHook(self.cfg, self.plan)
        return [self.phase_hook] + super().build_hooks()

    # ------------------------------------------------------------------ evaluation and resume
    def is_eval_epoch(self, epoch: int) -> bool:
        """Phase 3 only: every ``TEST.EVAL_PERIOD`` phase-3 epochs and after the last epoch."""
        return self.plan.is_eval_epoch(epoch, self.cfg.TEST.EVAL_PERIOD)

    def evaluate(self) -> Dict[str, Any]:
        """Evaluate with rank 0's buffers on every rank: the rank-sharded test loader then
        encodes every image with the BN statistics that are checkpointed."""
        self.phase_hook.sync_buffers()
        return super().evaluate()

    def resume_or_load(self, resume: bool = True) -> None:
        """Enter the saved phase first, so its optimizer state loads; then load."""
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            phase = self.phase_hook.saved_phase(saved)
            del saved
            if phase != self.phase_hook.phase:
                self.phase_hook.enter(phase)
        super().resume_or_load(resume)
