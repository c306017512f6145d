"""``CSDNPhaseHook``: enters CSDN's phases and installs each phase's training data."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from fastreid_ext.data.samplers import EpochBatchSampler, RandomEpochBatchSampler
from fastreid_ext.engine.distributed import unwrap_model
from fastreid_ext.utils.distributed_ops import broadcast_module_buffers

from .banks import ImageBankCache, TensorBank, extract_text_bank
from .modeling.meta_arch import PHASES
from .phases import PhasePlan, build_phase_optimizer

__all__ = ["CSDNPhaseHook"]

logger = logging.getLogger(__name__)


class CSDNPhaseHook(HookBase):
    """Runs first in every ``before_epoch``: at a phase's first epoch it freezes all but the
    phase's modules and installs the phase's optimizer (:meth:`enter`); whenever the installed
    data belong to another phase (a phase start, or the first epoch of a resumed run) it builds
    the phase's training data and hands it to ``trainer.set_train_set``:

    1. prompt: a :class:`TensorBank` of the phase-1 image bank (visible / infrared f_p pairs);
    2. fusion: the phase-2 image bank (both modalities pooled) with the frozen prompts' class
       texts ``[N, D]`` passed whole with every batch;
    3. image: the text bank (SII output per class, ``QUIRKS.TEXT_BANK_TRAIN_MODE``) is frozen
       into the model's buffers at the phase start; the trainer's visible-infrared pair set.

    Buffers that can differ between ranks are copied from rank 0 at a phase start (per-rank
    random initialisation, e.g. a random-init CLIP's prompt templates) and after the data is
    built (the text bank drawn with per-rank dropout; BN statistics of the train-mode phase-2
    bank pass). State: the phase of the installed optimizer (checkpointed, so ``--resume``
    rebuilds it before loading its state); the image banks are cached in ``OUTPUT_DIR``
    (:class:`ImageBankCache`) and deleted once a checkpoint of a later phase is written.

    ``CSDNPhasedTrainer`` installs this hook itself (it is not a ``TRAINER.HOOKS`` entry).
    """

    def __init__(self, cfg: CfgNode, plan: PhasePlan) -> None:
        self.cfg, self.plan = cfg, plan
        self.phase = -1  # phase of the installed optimizer
        self.data_phase: Optional[int] = None  # phase of the installed training data
        self.banks = ImageBankCache(cfg)

    # checkpointed state ---------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"phase": self.phase, "name": PHASES[self.phase] if self.phase >= 0 else ""}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.phase = int(state["phase"])

    def saved_phase(self, checkpoint: Dict[str, Any]) -> int:
        """The phase whose optimizer state ``checkpoint`` holds (from its epoch if the
        checkpoint has no state of this hook)."""
        state = checkpoint.get(f"hook_{type(self).__name__}")
        return int(state["phase"]) if state else self.plan.phase_of(int(checkpoint["epoch"]))

    # phases ---------------------------------------------------------------------------------
    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BN statistics, text banks, prompt templates) to every rank."""
        broadcast_module_buffers(unwrap_model(self.trainer.model), src=0)

    def enter(self, phase: int) -> None:
        """Train the modules of ``phase`` from now on: its optimizer (also checkpointed) and a DDP
        wrapper of its trainable parameters; buffers are synchronised from rank 0."""
        t = self.trainer
        module = unwrap_model(t.model)
        optimizer = build_phase_optimizer(self.cfg, module, phase)
        self.sync_buffers()
        t.rewrap_model()
        t.set_optimizer(optimizer)
        self.phase = phase
        n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        logger.info(
            "CSDN phase %d (%s): training %s (%d parameters)",
            phase + 1,
            PHASES[phase],
            ", ".join(module.state_summary()),
            n,
        )

    def drop_finished_banks(self, checkpoint_path: str) -> None:
        """Checkpointer save callback: the image banks of earlier phases are no longer needed."""
        self.banks.drop_before(self.phase)

    def _phase_data(self, phase: int) -> Tuple[Any, Optional[EpochBatchSampler]]:
        """``(train_set, sampler)`` of ``phase`` (the sampler is ``None`` for the image pairs)."""
        t, c = self.trainer, self.cfg.MODEL.CSDN
        module = unwrap_model(t.model)
        if phase == 2:
            if t.epoch == self.plan.starts[2]:
                t_vis, t_ir = extract_text_bank(
                    module, self.cfg.SOLVER.IMS_PER_BATCH, c.QUIRKS.TEXT_BANK_TRAIN_MODE
                )
                module.text_bank_visible.copy_(t_vis)
                module.text_bank_infrared.copy_(t_ir)
                logger.info("CSDN phase 3: text bank of %d identities frozen", len(t_vis))
            return t.image_train_set, None
        v, r, y = self.banks.get(module, phase, resumed=t.epoch != self.plan.starts[phase])
        if phase == 0:
            bank = TensorBank({"vis_feats": v, "ir_feats": r, "targets": y})
        else:
            with torch.no_grad():
                labels = torch.arange(module.num_classes, device=module.device)
                t_vis, t_ir = (x.float().cpu() for x in module.class_texts(labels))
            # the class texts [N, D] travel whole with every batch; the model indexes them
            bank = TensorBank(
                {"feats": torch.cat([v, r]), "targets": torch.cat([y, y])},
                shared={"class_text_vis": t_vis, "class_text_ir": t_ir},
            )
        batch = (c.PHASE1, c.PHASE2)[phase].IMS_PER_BATCH
        seed, rank, world = max(self.cfg.SEED, 0), comm.get_rank(), comm.get_world_size()
        return bank, RandomEpochBatchSampler(len(bank), batch, seed, rank, world)

    def before_epoch(self) -> None:
        phase = self.plan.phase_of(self.trainer.epoch)
        if phase != self.phase:
            self.enter(phase)
        if phase != self.data_phase:
            self.trainer.set_train_set(*self._phase_data(phase))
            # every rank trains on rank 0's text bank (and BN statistics of the phase-2 bank pass)
            self.sync_buffers()
            self.data_phase = phase
