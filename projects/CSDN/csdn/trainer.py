"""``CSDNPhasedTrainer``: CSDN's three training phases in one resumable run of train_net.py."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.utils import comm
from torch.utils.data import Dataset

from fastreid_ext.data.samplers import EpochBatchSampler, RandomEpochBatchSampler
from fastreid_ext.data.vi import (
    CrossModalPairSet,
    build_vi_loader,
    build_vi_sampler,
    build_vi_train_set,
)
from fastreid_ext.engine.distributed import create_ddp_model, unwrap_model
from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.registry import TRAINER_REGISTRY
from fastreid_ext.solver import build_optimizer
from fastreid_ext.utils.atomic_io import atomic_torch_save
from fastreid_ext.utils.distributed_ops import broadcast_module_buffers

from .banks import (
    TensorBank,
    TensorBatchLoader,
    extract_pair_bank,
    extract_text_bank,
    image_bank_train_mode,
)
from .distributed import apply_sync_batchnorm
from .model import PHASES
from .phases import PhasePlan, PhaseSchedule, PhaseState

__all__ = ["CSDNPhasedTrainer"]

logger = logging.getLogger(__name__)


def _phase_adam(cfg: CfgNode, module, phase: int) -> torch.optim.Optimizer:
    node = (cfg.MODEL.CSDN.PHASE1, cfg.MODEL.CSDN.PHASE2)[phase]
    named = list(module.phase_parameters(PHASES[phase]))
    if not named:
        raise ValueError(f"CSDN phase '{PHASES[phase]}' has no parameter to train")
    group = {
        "params": [p for _, p in named],
        "param_names": [n for n, _ in named],
        "lr": node.BASE_LR,
        "base_lr": node.BASE_LR,
        "weight_decay": node.WEIGHT_DECAY,
        "group_name": PHASES[phase],
    }
    return torch.optim.Adam([group], lr=node.BASE_LR)


@TRAINER_REGISTRY.register()
class CSDNPhasedTrainer(ExtTrainer):
    """Runs CSDN's phases in order within one ``tools/train_net.py`` invocation:

    1. **prompt** (MsPL): image bank (test transform, cross-modal sampler pass, eval mode), then
       SupCon between bank features and prompt texts; only the prompt learners train (Adam,
       ``MODEL.CSDN.PHASE1``, timm cosine).
    2. **fusion** (SII): a second image bank (train-mode BN with the authors' quirk), class texts
       of the frozen prompts; only SII trains (``PHASE2``).
    3. **image** (HSE): text bank (SII output per class) frozen into the model; the stems, trunk
       and heads train on P x K visible-infrared batches with ``SOLVER`` (classifier heads at
       ``NEW_MODULE_LR_FACTOR``), evaluated every ``TEST.EVAL_PERIOD`` phase-3 epochs.

    Each phase freezes everything else, gets a fresh optimizer and its own LR schedule. The
    phase is saved in every checkpoint (``csdn_phase``) so ``--resume`` rebuilds the right
    optimizer before loading it; the image banks are cached in ``OUTPUT_DIR`` so a run resumed
    inside phase 1 or 2 uses the very same bank (a bank is deleted once a checkpoint of a later
    phase is written: ``--resume`` can no longer return to its phase), and the text bank lives
    in the model's buffers. Resumed runs reproduce uninterrupted ones exactly, across phase
    boundaries too.

    Distributed training (``MODEL.CSDN.DDP``): the image side's BatchNorm layers become
    SyncBatchNorm (``SYNC_BN``, CUDA) and the batch-pool losses gather every rank's rows
    (``GATHER_LOSS_FEATURES``). DDP is built by ``create_ddp_model`` and so follows
    ``TRAINER.BROADCAST_BUFFERS``. CSDN does not need DDP's per-forward buffer broadcast: the
    buffers that can differ between ranks are synchronised from rank 0 explicitly, where they
    can diverge -- at every phase start (buffers built from per-rank random initialisation, e.g.
    the prompt learners' template embeddings of a random-init CLIP), after the phase data is
    built (the phase-3 text bank, drawn with per-rank dropout RNG under the
    ``TEXT_BANK_TRAIN_MODE`` quirk; BN running statistics updated by the train-mode phase-2
    bank pass) and before each evaluation (per-rank BN running statistics without SyncBN): the
    rank-sharded evaluation then encodes every test image with rank 0's buffers, the ones
    checkpointed.
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.plan = PhasePlan(cfg)
        self.phase_state = PhaseState()
        self._data_phase: Optional[int] = None
        super().__init__(cfg)
        self.checkpointer.checkpointables["csdn_phase"] = self.phase_state
        self.checkpointer.add_save_callback(self._drop_finished_banks)
        # before the phase's DDP wrapper is built (DDP inspects SyncBatchNorm layers)
        n = apply_sync_batchnorm(unwrap_model(self.model), cfg, comm.get_world_size())
        if n:
            logger.info("CSDN: %d BatchNorm layers of the image side synchronised (SYNC_BN)", n)
        self._configure_phase(self.plan.phase_of(0))

    # ------------------------------------------------------------------ building blocks
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

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer of the first phase (the trainer rebuilds it at every phase change)."""
        return cls.phase_optimizer(cfg, unwrap_model(model), PhasePlan(cfg).phase_of(0))

    @staticmethod
    def phase_optimizer(cfg: CfgNode, module, phase: int) -> torch.optim.Optimizer:
        """Freeze all but ``phase``'s modules and build its optimizer: Adam with one group for
        phases 1-2, ``fastreid_ext.solver.build_optimizer`` (``SOLVER``) for phase 3."""
        module.set_trainable(PHASES[phase])
        if phase < 2:
            return _phase_adam(cfg, module, phase)
        return build_optimizer(cfg, module)

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

    def set_train_set(self, train_set: Dataset, sampler: Optional[EpochBatchSampler] = None):
        super().set_train_set(train_set, sampler)
        if hasattr(self, "image_train_set"):
            self.max_iter = self.total_iterations()

    def build_hooks(self) -> List[Any]:
        self.max_epoch = self.plan.total
        self.image_train_set = self.train_set
        self.max_iter = self.total_iterations()
        self.schedule = PhaseSchedule(self.cfg, self.plan)
        return super().build_hooks()

    def is_eval_epoch(self, epoch: int) -> bool:
        """Phase 3 only: every ``TEST.EVAL_PERIOD`` phase-3 epochs and after the last epoch."""
        return self.plan.is_eval_epoch(epoch, self.cfg.TEST.EVAL_PERIOD)

    def evaluate(self) -> Dict[str, Any]:
        """Evaluate with rank 0's buffers on every rank: the rank-sharded test loader then
        encodes every image with the BN statistics that are checkpointed."""
        self._sync_buffers()
        return super().evaluate()

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (BN statistics, text banks, prompt templates) to every rank."""
        broadcast_module_buffers(unwrap_model(self.model), src=0)

    # ------------------------------------------------------------------ phases
    def _configure_phase(self, phase: int) -> None:
        """Trainable modules, optimizer (also in the checkpointer) and DDP wrapper of ``phase``
        (re-built: DDP registers the parameters that train; ``TRAINER.BROADCAST_BUFFERS`` and
        ``FIND_UNUSED_PARAMETERS`` as every trainer). Buffers are synchronised from rank 0."""
        module = unwrap_model(self.model)
        optimizer = self.phase_optimizer(self.cfg, module, phase)
        self._sync_buffers()
        self._trainer.model = create_ddp_model(module, self.cfg)
        self._trainer.optimizer = optimizer
        if self._trainer.grad_scaler is not None:
            self._trainer.grad_scaler = torch.amp.GradScaler("cuda")
        self.checkpointer.checkpointables["optimizer"] = optimizer
        self.phase_state.phase = phase
        n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        logger.info(
            "CSDN phase %d (%s): training %s (%d parameters)",
            phase + 1,
            PHASES[phase],
            ", ".join(module.state_summary()),
            n,
        )

    def _bank_path(self, phase: int) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, f"csdn_bank_phase{phase + 1}.pt")

    def _drop_finished_banks(self, checkpoint_path: str) -> None:
        """After a checkpoint is written: delete the cached image banks of the phases before
        the current one (``--resume`` continues from this checkpoint, never inside them)."""
        for phase in range(self.phase_state.phase):
            path = self._bank_path(phase)
            if comm.is_main_process() and os.path.isfile(path):
                os.remove(path)
                logger.info("Deleted the cached image bank %s (its phase is over)", path)

    def _image_bank(self, phase: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The phase's image bank: extracted at the phase start (and cached in OUTPUT_DIR), read
        back from the cache when a run resumes inside the phase."""
        module = unwrap_model(self.model)
        seed = int(
            np.random.SeedSequence([max(self.cfg.SEED, 0), 1000 + phase]).generate_state(1)[0]
        )
        checksum = float(sum(p.double().sum() for p in module.image_encoder.parameters()))
        path = self._bank_path(phase)
        if self.epoch != self.plan.starts[phase] and os.path.isfile(path):
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["seed"] == seed and cached["checksum"] == checksum:
                logger.info("CSDN phase %d: image bank read from %s", phase + 1, path)
                return cached["visible"], cached["infrared"], cached["labels"]
            logger.warning("Ignoring %s: it was extracted by a different model / seed", path)
        elif self.epoch != self.plan.starts[phase]:
            logger.warning("No cached image bank %s: extracting it again", path)
        v, r, y = extract_pair_bank(module, self.cfg, seed, image_bank_train_mode(self.cfg, phase))
        if comm.is_main_process() and self.cfg.OUTPUT_DIR:
            os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
            bank = {"visible": v, "infrared": r, "labels": y, "seed": seed, "checksum": checksum}
            atomic_torch_save(bank, path)
        return v, r, y

    def _prepare_phase_data(self, phase: int) -> None:
        """Build the phase's training data (banks, text bank) and install its loader."""
        module = unwrap_model(self.model)
        c = self.cfg.MODEL.CSDN
        rank, world = comm.get_rank(), comm.get_world_size()
        seed = max(self.cfg.SEED, 0)
        if phase == 0:
            v, r, y = self._image_bank(0)
            bank = TensorBank({"vis_feats": v, "ir_feats": r, "targets": y})
            sampler = RandomEpochBatchSampler(len(bank), c.PHASE1.IMS_PER_BATCH, seed, rank, world)
            self.set_train_set(bank, sampler)
        elif phase == 1:
            v, r, y = self._image_bank(1)
            with torch.no_grad():
                labels = torch.arange(module.num_classes, device=module.device)
                t_vis, t_ir = (t.float().cpu() for t in module.class_texts(labels))
            # the class texts [N, D] travel whole with every batch; the model indexes them
            bank = TensorBank(
                {"feats": torch.cat([v, r]), "targets": torch.cat([y, y])},
                shared={"class_text_vis": t_vis, "class_text_ir": t_ir},
            )
            sampler = RandomEpochBatchSampler(len(bank), c.PHASE2.IMS_PER_BATCH, seed, rank, world)
            self.set_train_set(bank, sampler)
        else:
            if self.epoch == self.plan.starts[2]:
                t_vis, t_ir = extract_text_bank(
                    module, self.cfg.SOLVER.IMS_PER_BATCH, c.QUIRKS.TEXT_BANK_TRAIN_MODE
                )
                module.text_bank_visible.copy_(t_vis)
                module.text_bank_infrared.copy_(t_ir)
                logger.info("CSDN phase 3: text bank of %d identities frozen", len(t_vis))
            self.set_train_set(self.image_train_set)
        # every rank trains on rank 0's text bank (and BN statistics of the phase-2 bank pass)
        self._sync_buffers()
        self._data_phase = phase

    def before_epoch(self) -> None:
        phase = self.plan.phase_of(self.epoch)
        if phase != self.phase_state.phase:
            self._configure_phase(phase)
        if phase != self._data_phase:
            self._seed_epoch(offset=0)
            self._prepare_phase_data(phase)
        super().before_epoch()

    def resume_or_load(self, resume: bool = True) -> None:
        """Rebuild the saved phase's optimizer first, so its state loads; then load."""
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = saved.get("csdn_phase")
            phase = int(state["phase"]) if state else self.plan.phase_of(int(saved["epoch"]))
            del saved
            if phase != self.phase_state.phase:
                self._configure_phase(phase)
        super().resume_or_load(resume)
