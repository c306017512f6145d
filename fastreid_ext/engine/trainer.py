"""The trainer shared by every method: epoch-deterministic data, param-group LRs, AMP, registries."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.engine import hooks as fr_hooks
from fastreid.engine.defaults import DefaultTrainer
from fastreid.engine.train_loop import TrainerBase
from fastreid.evaluation.testing import print_csv_format
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm
from fastreid.utils.events import EventStorage
from fastreid.utils.logger import setup_logger
from torch.utils.data import Dataset

from ..data.samplers import EpochBatchSampler
from ..data.text_image import TextImageTrainSet, build_t2i_train_loader, load_text_image_dataset
from ..data.transforms import build_image_transforms
from ..evaluation.inference import run_inference
from ..registry import EVALUATOR_REGISTRY, HOOK_REGISTRY, TRAINER_REGISTRY, lookup
from ..solver import build_lr_schedule, build_optimizer
from ..text.tokenizer import ClipTokenizer
from ..visualization.hooks import TrainingCurvesHook
from .checkpoint import (
    NUM_CLASSES_KEY,
    ExtCheckpointer,
    build_model_info,
    infer_num_classes,
    read_checkpoint,
    read_model_info,
)
from .distributed import create_ddp_model
from .hooks import EpochEndHook, LRScheduleHook, ProgressLogger
from .step import StepRunner, resolve_amp_dtype, writer_flush_schedule
from .writers import MetricsJSONWriter, TensorboardWriter, TrainerMetricPrinter

__all__ = ["ExtTrainer", "build_trainer"]

logger = logging.getLogger(__name__)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([max(seed, 0), epoch, rank]).generate_state(1)[0])


@TRAINER_REGISTRY.register()
class ExtTrainer(DefaultTrainer):
    """fast-reid ``DefaultTrainer`` with what cross-modal methods need.

    * Epoch-deterministic data: the sampler order and every RNG (augmentation, MLM masking,
      dropout) are re-seeded from (SEED, epoch, rank) at each epoch start, so ``--resume`` after an
      interruption reproduces the uninterrupted run exactly.
    * Hooks may replace the training set between epochs (:meth:`set_train_set`); the loader,
      ``iters_per_epoch`` and ``max_iter`` follow, and the LR schedule is defined in epochs.
    * Per-parameter-group LRs (pretrained encoders vs new modules, bias factor), warm-up + cosine
      or multi-step schedules, AMP (bf16/fp16) on GPU only, device-aware DDP with a
      ``find_unused_parameters`` switch.
    * Method hooks (``TRAINER.HOOKS``, HOOK_REGISTRY) and evaluators (``TEST.EVALUATOR``,
      EVALUATOR_REGISTRY). Hooks with ``state_dict``/``load_state_dict`` are checkpointed.
    """

    def __init__(self, cfg: CfgNode) -> None:
        TrainerBase.__init__(self)
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):
            setup_logger()
        train_set = self.build_train_set(cfg)
        cfg = self.auto_scale_hyperparams(cfg, getattr(train_set, "num_classes", 0))
        self.cfg = cfg
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        model = create_ddp_model(model, cfg)
        device = torch.device(cfg.MODEL.DEVICE)
        amp_dtype = resolve_amp_dtype(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE, device)
        if cfg.SOLVER.AMP.ENABLED and amp_dtype is None:
            logger.warning("SOLVER.AMP.ENABLED is ignored on %s: AMP runs on CUDA only", device)
        clip = cfg.SOLVER.CLIP_GRADIENTS
        self._trainer = StepRunner(
            model,
            None,
            optimizer,
            amp_dtype=amp_dtype,
            clip_grad_norm=clip.CLIP_VALUE if clip.ENABLED else 0.0,
            # losses reach the host once per log period and at epoch ends, not every iteration
            flush_at=writer_flush_schedule(self, cfg.TRAINER.LOG_PERIOD),
        )
        self.schedule = build_lr_schedule(cfg)
        self.scheduler: Dict[str, Any] = {}
        self.checkpointer = ExtCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            save_to_disk=comm.is_main_process(),
            model_info=self.model_info(cfg),
            optimizer=optimizer,
        )
        self.checkpointer.remove_stale_temporaries()
        if self._trainer.grad_scaler is not None:  # fp16: resume with the same loss scale
            self.checkpointer.checkpointables["grad_scaler"] = self._trainer.grad_scaler
        self.start_epoch = 0
        self.start_iter = 0
        self.epoch_start_iter = 0
        self.max_epoch = self.num_epochs()
        self.warmup_iters = 0
        self.delay_epochs = 0
        self._last_eval_results: Optional[Dict[str, Any]] = None
        self.set_train_set(train_set)
        self.register_hooks(self.build_hooks())
        for hook in self._hooks:
            if hasattr(hook, "state_dict") and hasattr(hook, "load_state_dict"):
                self.checkpointer.checkpointables[f"hook_{type(hook).__name__}"] = hook
        self.preflight()

    def num_epochs(self) -> int:
        """Epochs of the whole run (``SOLVER.MAX_EPOCH``; multi-phase methods add theirs)."""
        return int(self.cfg.SOLVER.MAX_EPOCH)

    # ------------------------------------------------------------------ step runner
    def rewrap_model(self) -> None:
        """Re-build the DDP wrapper of the model (DDP registers the parameters that train, so a
        change of trainable parameters needs a new wrapper)."""
        self._trainer.model = create_ddp_model(self.model, self.cfg)

    def set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Train with ``optimizer`` from the next step on; it is the one checkpointed (and an
        fp16 GradScaler starts afresh)."""
        self._trainer.optimizer = optimizer
        self.checkpointer.checkpointables["optimizer"] = optimizer
        if self._trainer.grad_scaler is not None:
            self._trainer.grad_scaler = torch.amp.GradScaler("cuda")
            self.checkpointer.checkpointables["grad_scaler"] = self._trainer.grad_scaler

    def preflight(self) -> None:
        """Resolve everything the run will need after training starts -- every evaluation
        dataset of ``DATASETS.TESTS`` with its evaluator (``TEST.EVALUATOR``) -- so a typo fails
        in seconds instead of after the first epoch. Subclasses add their own checks."""
        if not self.cfg.DATASETS.TESTS:
            raise ValueError("DATASETS.TESTS is empty: name at least one evaluation dataset")
        for name in self.cfg.DATASETS.TESTS:
            try:
                self.build_evaluator(self.cfg, name)
            except Exception as exc:
                message = f"DATASETS.TESTS entry '{name}' cannot be evaluated: {exc}"
                try:  # keep the exception type (KeyError, FileNotFoundError, ...) when possible
                    error = type(exc)(message)
                except Exception:
                    error = RuntimeError(message)
                raise error from exc

    # ------------------------------------------------------------------ data
    @classmethod
    def build_train_set(cls, cfg: CfgNode) -> Dataset:
        """The training set (default: one item per caption of the text-image datasets in
        ``DATASETS.NAMES``). Methods with other data override this."""
        pairs: List[Any] = []
        pid_offset = image_offset = 0
        for name in cfg.DATASETS.NAMES:
            data = load_text_image_dataset(name, cfg)
            if comm.is_main_process():
                data.show_summary()
            # identities and images of several datasets must not share ids
            pairs.extend(
                p.__class__(p.pid + pid_offset, p.image_id + image_offset, p.img_path, p.caption)
                for p in data.train
            )
            pid_offset += data.num_train_pids
            image_offset += data.num_train_images
        return cls.text_image_train_set(cfg, pairs)

    @staticmethod
    def text_image_train_set(
        cfg: CfgNode, pairs: List[Any], set_cls: type = TextImageTrainSet
    ) -> Dataset:
        """``set_cls(pairs, ...)`` with the training transforms, the CLIP tokenizer and MLM
        inputs when ``INPUT.TEXT.MLM`` or the MLM loss asks for them."""
        return set_cls(
            pairs,
            build_image_transforms(cfg, is_train=True),
            ClipTokenizer(cfg.MODEL.CLIP.CONTEXT_LENGTH),
            mlm=cfg.INPUT.TEXT.MLM or "MLM" in cfg.MODEL.T2I.LOSSES,
            mlm_prob=cfg.INPUT.TEXT.MLM_PROB,
        )

    @classmethod
    def num_train_classes(cls, cfg: CfgNode) -> int:
        """Number of training identities (sizes the classifier when evaluating a checkpoint).

        The count stored in the ``MODEL.WEIGHTS`` checkpoint (``"model_info"``, written by every
        training run) when there is one: no training set is read. Otherwise the training set's;
        if that cannot be read either, the count inferred from the checkpoint's tensor shapes
        (:func:`~fastreid_ext.engine.checkpoint.infer_num_classes`).
        """
        path = cfg.MODEL.WEIGHTS
        if path and os.path.isfile(path):
            info = read_model_info(path)
            if info is not None and NUM_CLASSES_KEY in info.get("data_config", {}):
                return int(info["data_config"][NUM_CLASSES_KEY])
        try:
            return int(getattr(cls.build_train_set(cfg), "num_classes", 0))
        except Exception as exc:
            if not (path and os.path.isfile(path)):
                raise
            inferred = infer_num_classes(cfg, cls.build_model, read_checkpoint(path), path)
            if inferred is None:
                raise
            logger.info(
                "Training set unavailable (%s); %s=%d inferred from the tensors of %s",
                exc,
                NUM_CLASSES_KEY,
                inferred,
                path,
            )
            return inferred

    @classmethod
    def model_info(cls, cfg: CfgNode) -> Dict[str, Any]:
        """What every checkpoint of this run records to rebuild the model without the training
        set (:func:`~fastreid_ext.engine.checkpoint.build_model_info`); a method whose model
        depends on other data-derived config values adds them to ``"data_config"``."""
        return build_model_info(cfg)

    @classmethod
    def build_train_loader(
        cls,
        cfg: CfgNode,
        train_set: Optional[Dataset] = None,
        sampler: Optional[EpochBatchSampler] = None,
    ):
        """Loader over ``train_set`` with an epoch batch sampler."""
        if train_set is None:
            train_set = cls.build_train_set(cfg)
        return build_t2i_train_loader(cfg, train_set, sampler)

    def set_train_set(self, train_set: Dataset, sampler: Optional[EpochBatchSampler] = None):
        """Replace the training set (e.g. new pseudo labels); takes effect at the next epoch start
        when called from a ``before_epoch`` hook."""
        self.train_set = train_set
        loader = self.build_train_loader(self.cfg, train_set, sampler)
        self._trainer.data_loader = loader
        self.iters_per_epoch = len(loader.batch_sampler)
        remaining = max(self.max_epoch - getattr(self, "epoch", self.start_epoch), 0)
        self.max_iter = getattr(self, "iter", self.start_iter) + remaining * self.iters_per_epoch

    # ------------------------------------------------------------------ model
    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        lookup(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE")
        return super().build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    # ------------------------------------------------------------------ hooks
    def build_hooks(self) -> List[Any]:
        cfg = self.cfg
        ret: List[Any] = [
            fr_hooks.IterationTimer(),
            LRScheduleHook(self.schedule),
            ProgressLogger(),
        ]
        for name in cfg.TRAINER.HOOKS:
            ret.append(lookup(HOOK_REGISTRY, name, "TRAINER.HOOKS")(cfg, self))

        metric_key = "metric" if len(cfg.DATASETS.TESTS) == 1 else f"{cfg.DATASETS.TESTS[0]}/metric"
        self.epoch_end_hook = EpochEndHook(
            self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, metric_key
        )
        ret.append(self.epoch_end_hook)
        if comm.is_main_process():
            # the epoch of each evaluation into metrics.json; training_curves.png after training
            ret.append(TrainingCurvesHook(cfg))
            # after the epoch-end hook: its evaluation metrics are written at the same epoch end
            ret.append(fr_hooks.PeriodicWriter(self.build_writers(), cfg.TRAINER.LOG_PERIOD))
        return ret

    def build_writers(self) -> List[Any]:
        """Console printer (ETA follows a changing ``max_iter``), ``metrics.json`` and
        TensorBoard writers that write every scalar put into the storage (``engine/writers.py``)."""
        out = self.cfg.OUTPUT_DIR
        return [
            TrainerMetricPrinter(self),
            MetricsJSONWriter(os.path.join(out, "metrics.json")),
            TensorboardWriter(out),
        ]

    def is_eval_epoch(self, epoch: int) -> bool:
        """Whether the model is evaluated after ``epoch`` (0-based): every ``TEST.EVAL_PERIOD``
        epochs and after the last one (only the last when the period is <= 0)."""
        period = self.cfg.TEST.EVAL_PERIOD
        return epoch + 1 >= self.max_epoch or (period > 0 and (epoch + 1) % period == 0)

    def evaluate(self) -> Dict[str, Any]:
        """Evaluate the model being trained on ``DATASETS.TESTS`` (every rank takes part; the
        results are returned on the main process)."""
        self._last_eval_results = self.test(self.cfg, self.model)
        return self._last_eval_results

    def best_record(self) -> Dict[str, Any]:
        """The best evaluation so far: ``metric``, ``metric_key``, ``epoch``, ``checkpoint``,
        ``results`` (empty before the first evaluation); restored by ``--resume``."""
        return dict(self.epoch_end_hook.best)

    # ------------------------------------------------------------------ loop
    def resume_or_load(self, resume: bool = True) -> None:
        checkpoint = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_epoch = int(checkpoint.get("epoch", -1)) + 1
            self.start_iter = int(
                checkpoint.get("iteration", self.start_epoch * self.iters_per_epoch)
            )
            logger.info("Resuming at epoch %d (iteration %d)", self.start_epoch, self.start_iter)

    def before_epoch(self) -> None:
        self.storage.epoch = self.epoch
        self._seed_epoch(offset=0)
        for h in self._hooks:
            h.before_epoch()
        # Data order and augmentation randomness depend only on (seed, epoch, rank).
        self._seed_epoch(offset=1)
        self.epoch_start_iter = self.iter
        self._trainer.data_loader.batch_sampler.set_epoch(self.epoch)
        self._trainer.reset_data_iterator()

    def stops_after_epoch(self) -> bool:
        """True when ``TRAINER.STOP_AFTER_EPOCHS`` ends this invocation after the current epoch."""
        n = self.cfg.TRAINER.STOP_AFTER_EPOCHS
        return n > 0 and self.epoch + 1 - self.start_epoch >= n and self.epoch + 1 < self.max_epoch

    def _seed_epoch(self, offset: int) -> None:
        import random

        seed = _epoch_seed(self.cfg.SEED, 2 * self.epoch + offset, comm.get_rank())
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)

    def train(self) -> Optional[Dict[str, Any]]:
        if self.start_epoch >= self.max_epoch:
            logger.info(
                "Training already finished (epoch %d of %d)", self.start_epoch, self.max_epoch
            )
            results = self.evaluate()  # every rank takes part; the main process gets results
            return results if comm.is_main_process() else None
        self.iter = self.start_iter
        self.max_iter = self.start_iter + (self.max_epoch - self.start_epoch) * self.iters_per_epoch
        logger.info("Starting training from epoch %d", self.start_epoch)
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                for epoch in range(self.start_epoch, self.max_epoch):
                    self.epoch = epoch
                    self.before_epoch()
                    for _ in range(self.iters_per_epoch):
                        self.before_step()
                        self.run_step()
                        self.after_step()
                        self.iter += 1
                    self.after_epoch()
                    if self.stops_after_epoch():
                        logger.info(
                            "Stopping after epoch %d (TRAINER.STOP_AFTER_EPOCHS); "
                            "continue with --resume",
                            self.epoch + 1,
                        )
                        break
            finally:
                self.after_train()
        if comm.is_main_process():
            return self._last_eval_results
        return None

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None):
        if cfg.TEST.EVALUATOR:
            evaluator_cls = lookup(EVALUATOR_REGISTRY, cfg.TEST.EVALUATOR, "TEST.EVALUATOR")
            return evaluator_cls.build(cfg, dataset_name, output_dir or cfg.OUTPUT_DIR)
        return super().build_evaluator(cfg, dataset_name, output_dir)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module) -> Dict[str, Any]:
        if not cfg.TEST.EVALUATOR:
            return super().test(cfg, model)
        results: OrderedDict[str, Any] = OrderedDict()
        for dataset_name in cfg.DATASETS.TESTS:
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            res = run_inference(model, data_loader, evaluator, desc=f"Evaluating {dataset_name}")
            results[dataset_name] = res
            if comm.is_main_process() and res:
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                table = OrderedDict(res)
                table["dataset"] = dataset_name
                print_csv_format(table)
        if len(results) == 1:
            return list(results.values())[0]
        return results


def build_trainer(cfg: CfgNode) -> ExtTrainer:
    """Instantiate ``cfg.TRAINER.NAME`` from TRAINER_REGISTRY."""
    return lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME")(cfg)
