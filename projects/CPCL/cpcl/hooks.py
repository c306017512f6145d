"""CPCL's per-epoch pseudo labelling as a trainer hook: clusters, hands the centroids to the
model's memories and installs the epoch's training set."""

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

from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine.distributed import run_on_main_and_share, unwrap_model
from fastreid_ext.engine.feature_extraction import extract_pair_features
from fastreid_ext.registry import HOOK_REGISTRY
from fastreid_ext.utils.atomic_io import atomic_write_text

from .config import check_cpcl_config
from .data import CPCLTrainSet
from .pseudo_labels import compute_pseudo_labels, select_training_pairs

__all__ = ["CPCLPseudoLabelHook"]

logger = logging.getLogger(__name__)


@HOOK_REGISTRY.register()
class CPCLPseudoLabelHook(HookBase):
    """Pseudo labels, memories and training set of every CPCL epoch.

    ``before_epoch`` (from ``MODEL.CPCL.CLUSTER.START_EPOCH``, every ``MODEL.CPCL.CLUSTER.PERIOD``
    epochs; before it every label is -1 and the memories are empty): extract the image and text
    features of every training pair in eval mode (all ranks, dataset order), cluster each
    modality (k-reciprocal Jaccard + DBSCAN) and mine outliers (OPLM) on the main process, share
    the labels and centroids, install the centroids in the model's memories
    (``CPCLT2I.reset_memories``), log counts (and the NMI/ARI diagnostic if
    ``MODEL.CPCL.DIAGNOSTICS.ENABLED``); then install the epoch's training set with
    ``trainer.set_train_set`` (loader, sampler, iters_per_epoch and schedule follow).

    State flows from this hook to the model and the trainer only: the model updates its
    memories itself after every step and the hook never reads them. The hook's state dict
    (saved in every checkpoint) holds the pseudo labels and the epoch they were computed at; the
    memories are in the model's state. ``--resume`` restores both exactly.
    """

    def __init__(self, cfg: CfgNode, trainer: Any) -> None:
        check_cpcl_config(cfg)
        base = trainer.train_set
        if not isinstance(base, CPCLTrainSet):
            raise ConfigValueError(
                "TRAINER.NAME",
                cfg.TRAINER.NAME,
                "'CPCLTrainer' or a subclass: CPCLPseudoLabelHook needs the weakly supervised "
                f"training set (CPCLTrainSet), got a {type(base).__name__}",
            )
        self.cfg = cfg
        self.base = base
        self.image_ids = np.asarray([p.image_id for p in base.pairs], dtype=np.int64)
        self.image_labels: Optional[np.ndarray] = None
        self.text_labels: Optional[np.ndarray] = None
        self.labels_epoch = -1
        self.diagnostics = None
        if cfg.MODEL.CPCL.DIAGNOSTICS.ENABLED and comm.is_main_process():
            from .diagnostics import PseudoLabelDiagnostics

            self.diagnostics = PseudoLabelDiagnostics(cfg)
        self.log_path = os.path.join(cfg.OUTPUT_DIR, "cpcl_pseudo_labels.jsonl")

    # ------------------------------------------------------------------ epoch start
    def before_epoch(self) -> None:
        """Pseudo labels ``[N]`` per modality (re-clustered or carried over), the model's
        memories ``[K_v, D]`` / ``[K_t, D]`` (reset at a clustering, else kept) and the epoch's
        training set (a :class:`CPCLTrainSet` over the selected pair indices;
        ``trainer.iters_per_epoch`` follows its length)."""
        t = self.trainer
        model = unwrap_model(t.model)
        c = self.cfg.MODEL.CPCL.CLUSTER
        if t.epoch < c.START_EPOCH:
            self._no_labels(model)
        elif self.labels_epoch < c.START_EPOCH or t.epoch - self.labels_epoch >= c.PERIOD:
            self._recluster(model, t.epoch)
        indices = select_training_pairs(
            self.image_labels,
            self.text_labels,
            self.cfg.MODEL.CPCL.TRAIN_SET,
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

    def _no_labels(self, model: torch.nn.Module) -> None:
        """Before CLUSTER.START_EPOCH: every pair is an outlier and the memories are empty."""
        n = len(self.base.pairs)
        self.image_labels = np.full(n, -1, dtype=np.int64)
        self.text_labels = np.full(n, -1, dtype=np.int64)
        self.labels_epoch = -1
        model.clear_memories()

    def _recluster(self, model: torch.nn.Module, epoch: int) -> None:
        """Cluster at ``epoch`` and install the labels ``[N]`` and the centroids."""
        start = time.perf_counter()
        total = self.cfg.MODEL.CPCL.CLUSTER.IMS_PER_BATCH  # 0: TEST.IMS_PER_BATCH
        per_rank = max(1, total // comm.get_world_size()) if total else 0
        image_feats, text_feats = extract_pair_features(model, self.base.pairs, self.cfg, per_rank)

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
        model.reset_memories(image_centroids, text_centroids)
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

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        """Pseudo labels (``[N]`` int64, empty before the first clustering) and their epoch."""

        def labels(x: Optional[np.ndarray]) -> torch.Tensor:
            return torch.zeros(0, dtype=torch.long) if x is None else torch.from_numpy(x.copy())

        return {
            "image_labels": labels(self.image_labels),
            "text_labels": labels(self.text_labels),
            "labels_epoch": self.labels_epoch,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the pseudo labels. A checkpoint of the earlier layout, whose hook state also
        held the memories (``image_memory`` / ``text_memory`` ``[K, D]``), hands them to the
        model, so such a run resumes exactly too."""
        if "image_memory" in state:
            pmm = unwrap_model(self.trainer.model).pmm
            pmm.load_state_dict(
                {"image.features": state["image_memory"], "text.features": state["text_memory"]}
            )
        n = len(self.base.pairs)
        self.labels_epoch = int(state["labels_epoch"])
        if self.labels_epoch < 0:
            self.image_labels = self.text_labels = None
            return
        iv = state["image_labels"].numpy().astype(np.int64)
        it = state["text_labels"].numpy().astype(np.int64)
        if iv.shape != (n,) or it.shape != (n,):
            raise ValueError(
                f"CPCLPseudoLabelHook: the checkpoint's pseudo labels cover {len(iv)} pairs but "
                f"the training set has {n}; was it trained on the same DATASETS.NAMES?"
            )
        self.image_labels, self.text_labels = iv, it
