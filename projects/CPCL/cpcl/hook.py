"""CPCL's per-epoch pseudo labelling and prototypical-memory maintenance, as a trainer hook."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from fastreid_ext.clustering.oplm import OPLM_MODES
from fastreid_ext.engine.distributed import run_on_main_and_share
from fastreid_ext.engine.feature_extraction import extract_pair_features
from fastreid_ext.modeling.memory import PrototypicalMemory
from fastreid_ext.registry import HOOK_REGISTRY
from fastreid_ext.utils.atomic_io import atomic_write_text

from .data import CPCLTrainSet
from .pmm import PMM_MODES, update_memories
from .pseudo_labels import TRAIN_SET_MODES, compute_pseudo_labels, select_training_pairs

__all__ = ["CPCLPseudoLabelHook"]

logger = logging.getLogger("fastreid_ext.cpcl")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


@HOOK_REGISTRY.register()
class CPCLPseudoLabelHook(HookBase):
    """Pseudo labels, training set and memories of CPCL.

    ``before_epoch`` (from ``CPCL.CLUSTER.START_EPOCH``, every ``CPCL.CLUSTER.PERIOD`` epochs;
    before it every label is -1 and the memories are empty): extract the image and text features
    of every training pair in eval mode (all ranks, dataset order), cluster each modality
    (k-reciprocal Jaccard + DBSCAN) and mine outliers (OPLM) on the main process, broadcast the
    labels and centroids, re-initialise both memories, log counts (and the NMI/ARI diagnostic if
    ``CPCL.DIAGNOSTICS``); then install the epoch's training set with
    ``trainer.set_train_set`` (loader, sampler, iters_per_epoch and schedule follow).
    ``after_step``: momentum-update the memories with the batch features of all ranks.

    The state dict (saved in every checkpoint) holds the pseudo labels, the epoch they were
    computed at and both memories; ``--resume`` restores them exactly.
    """

    def __init__(self, cfg: CfgNode, trainer: Any) -> None:
        c = cfg.CPCL
        if c.TRAIN_SET not in TRAIN_SET_MODES:
            raise ValueError(
                f"CPCL.TRAIN_SET must be one of {TRAIN_SET_MODES}, got {c.TRAIN_SET!r}"
            )
        if c.OPLM.MODE not in OPLM_MODES:
            raise ValueError(f"CPCL.OPLM.MODE must be one of {OPLM_MODES}, got {c.OPLM.MODE!r}")
        if c.PMM.MODE not in PMM_MODES:
            raise ValueError(f"CPCL.PMM.MODE must be one of {PMM_MODES}, got {c.PMM.MODE!r}")
        if c.CLUSTER.PERIOD < 1:
            raise ValueError(f"CPCL.CLUSTER.PERIOD must be >= 1, got {c.CLUSTER.PERIOD}")
        base = trainer.train_set
        if not isinstance(base, CPCLTrainSet):
            raise TypeError(
                "CPCLPseudoLabelHook needs the weakly supervised training set: set TRAINER.NAME "
                f"to CPCLTrainer (got a {type(base).__name__})"
            )
        self.cfg = cfg
        self.base = base
        self.image_ids = np.asarray([p.image_id for p in base.pairs], dtype=np.int64)
        model = _unwrap(trainer.model)
        dim, device = model.backbone.embed_dim, model.device
        self.image_memory = PrototypicalMemory(dim, c.PMM.MOMENTUM).to(device)
        self.text_memory = PrototypicalMemory(dim, c.PMM.MOMENTUM).to(device)
        self.image_labels: Optional[np.ndarray] = None
        self.text_labels: Optional[np.ndarray] = None
        self.labels_epoch = -1
        self.diagnostics = None
        if c.DIAGNOSTICS and comm.is_main_process():
            from .diagnostics import PseudoLabelDiagnostics

            self.diagnostics = PseudoLabelDiagnostics(cfg)
        self.log_path = os.path.join(cfg.OUTPUT_DIR, "cpcl_pseudo_labels.jsonl")

    # ------------------------------------------------------------------ epoch start
    def before_epoch(self) -> None:
        """Pseudo labels ``[N]`` per modality (re-clustered or carried over), memories
        ``[K_v, D]`` / ``[K_t, D]`` and the epoch's training set (a :class:`CPCLTrainSet` over
        the selected pair indices; ``trainer.iters_per_epoch`` follows its length)."""
        t = self.trainer
        model = _unwrap(t.model)
        c = self.cfg.CPCL.CLUSTER
        if t.epoch < c.START_EPOCH:
            self._no_labels()
        elif self.labels_epoch < c.START_EPOCH or t.epoch - self.labels_epoch >= c.PERIOD:
            self._recluster(model, t.epoch)
        model.set_memories(self.image_memory, self.text_memory)
        indices = select_training_pairs(
            self.image_labels,
            self.text_labels,
            self.cfg.CPCL.TRAIN_SET,
            self.cfg.SOLVER.IMS_PER_BATCH,
        )
        b = self.base
        t.set_train_set(
            CPCLTrainSet(
                b.pairs,
                b.transform,
                b.tokenizer,
                self.image_labels,
                self.text_labels,
                indices,
                mlm=b.mlm,
                mlm_prob=b.mlm_prob,
            )
        )
        if comm.is_main_process():
            logger.info(
                "CPCL epoch %d: %d of %d pairs train (%d iterations)",
                t.epoch,
                len(indices),
                len(b.pairs),
                t.iters_per_epoch,
            )

    def _no_labels(self) -> None:
        """Before CLUSTER.START_EPOCH: every pair is an outlier and the memories are empty."""
        n = len(self.base.pairs)
        self.image_labels = np.full(n, -1, dtype=np.int64)
        self.text_labels = np.full(n, -1, dtype=np.int64)
        self.labels_epoch = -1
        empty = torch.zeros(0, self.image_memory.dim)
        self.image_memory.reset(empty)
        self.text_memory.reset(empty)

    def _recluster(self, model: torch.nn.Module, epoch: int) -> None:
        start = time.perf_counter()
        image_feats, text_feats = extract_pair_features(
            model, self.base.pairs, self.cfg, self.cfg.CPCL.CLUSTER.BATCH_SIZE
        )

        def label_and_diagnose():
            result = compute_pseudo_labels(image_feats, text_feats, self.image_ids, self.cfg)
            stats = dict(result.stats)
            if self.diagnostics is not None:
                stats.update(self.diagnostics.evaluate(result.image_labels, result.text_labels))
            return (
                result.image_labels,
                result.text_labels,
                result.image_centroids,
                result.text_centroids,
                stats,
            )

        payload = run_on_main_and_share(
            label_and_diagnose, f"CPCL pseudo labelling at epoch {epoch}"
        )
        image_labels, text_labels, image_centroids, text_centroids, stats = payload
        self.image_labels, self.text_labels = image_labels, text_labels
        self.labels_epoch = epoch
        self.image_memory.reset(image_centroids)
        self.text_memory.reset(text_centroids)
        if comm.is_main_process():
            record: Dict[str, Any] = {"epoch": epoch, **stats}
            record["time_total"] = time.perf_counter() - start
            self._log(record)

    def _log(self, record: Dict[str, Any]) -> None:
        counts = (
            f"images {record['image_clusters']} clusters / {record['image_outliers']} outliers "
            f"({record['image_outliers_after_oplm']} after OPLM), texts "
            f"{record['text_clusters']} clusters / {record['text_outliers']} outliers "
            f"({record['text_outliers_after_oplm']} after OPLM)"
        )
        quality = ""
        if "image_nmi" in record:
            quality = (
                f"; diagnostic NMI (outliers as one class) image {record['image_nmi']:.4f} "
                f"text {record['text_nmi']:.4f}, ARI image {record['image_ari']:.4f} "
                f"text {record['text_ari']:.4f}"
            )
        logger.info(
            "CPCL pseudo labels at epoch %d: %s%s (%.1f s)",
            record["epoch"],
            counts,
            quality,
            record["time_total"],
        )
        storage = getattr(self.trainer, "storage", None)
        if storage is not None:
            for key, value in record.items():
                if key != "epoch" and not key.startswith("time_"):
                    storage.put_scalar(f"cpcl/{key}", float(value), smoothing_hint=False)
        if self.cfg.OUTPUT_DIR:
            os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
            # one line per epoch: a rerun or a resumed run replaces the records of this epoch and
            # later ones instead of appending after them
            kept = []
            if os.path.isfile(self.log_path):
                with open(self.log_path) as f:
                    kept = [
                        ln for ln in f if ln.strip() and json.loads(ln)["epoch"] < record["epoch"]
                    ]
            text = "".join(kept + [json.dumps(record, default=float) + "\n"])
            atomic_write_text(self.log_path, text)

    # ------------------------------------------------------------------ steps
    def after_step(self) -> None:
        """Momentum-update both memories (``CPCL.PMM.MODE``) with the step's detached features
        ``[B, D]`` and pseudo labels ``[B]`` of every rank, gathered in one ``all_gather``."""
        model = _unwrap(self.trainer.model)
        step = model.pop_step_features()
        c = self.cfg.CPCL
        if step is None or not c.PMM.UPDATE or "PCM" not in c.LOSSES:
            return
        update_memories(
            self.image_memory,
            self.text_memory,
            step.image_feats,
            step.text_feats,
            step.image_labels,
            step.text_labels,
            c.PMM.MODE,
            gather=True,
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        """Pseudo labels (``[N]`` int64, empty before the first clustering), their epoch, and
        both memories (``[K, D]``)."""

        def labels(x: Optional[np.ndarray]) -> torch.Tensor:
            return torch.zeros(0, dtype=torch.long) if x is None else torch.from_numpy(x.copy())

        return {
            "image_labels": labels(self.image_labels),
            "text_labels": labels(self.text_labels),
            "labels_epoch": self.labels_epoch,
            "image_memory": self.image_memory.features.detach().cpu().clone(),
            "text_memory": self.text_memory.features.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        n = len(self.base.pairs)
        self.labels_epoch = int(state["labels_epoch"])
        if self.labels_epoch < 0:
            self.image_labels = self.text_labels = None
        else:
            iv = state["image_labels"].numpy().astype(np.int64)
            it = state["text_labels"].numpy().astype(np.int64)
            if iv.shape != (n,) or it.shape != (n,):
                raise ValueError(
                    f"CPCLPseudoLabelHook: the checkpoint's pseudo labels cover {len(iv)} pairs but "
                    f"the training set has {n}; was it trained on the same DATASETS.NAMES?"
                )
            self.image_labels, self.text_labels = iv, it
        # bit-exact restore (reset() would re-normalise)
        self.image_memory.load_state_dict({"features": state["image_memory"]})
        self.text_memory.load_state_dict({"features": state["text_memory"]})
