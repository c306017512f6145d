"""Per-epoch pseudo labels of CPCL: cluster each modality, mine outliers (OPLM), pick the pairs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import torch
from fastreid.config import CfgNode

from fastreid_ext.clustering import cluster_pseudo_labels, label_counts, outlier_pseudo_label_mining
from fastreid_ext.config import check_choice
from fastreid_ext.modeling.memory import cluster_centroids

from .config import OPLM_NAMES, TRAIN_SETS

__all__ = ["PseudoLabels", "compute_pseudo_labels", "select_training_pairs"]

logger = logging.getLogger(__name__)


@dataclass
class PseudoLabels:
    """Pseudo labels of the N training pairs and the initial memories.

    Attributes:
        image_labels, text_labels: ``[N]`` int64, ``-1`` = outlier; the captions of one image
            share its image label.
        image_centroids, text_centroids: ``[K_v, D]`` / ``[K_t, D]`` L2-normalised cluster means
            (after mining).
        stats: counts and timings for the log.
    """

    image_labels: np.ndarray
    text_labels: np.ndarray
    image_centroids: torch.Tensor
    text_centroids: torch.Tensor
    stats: Dict[str, float] = field(default_factory=dict)


def compute_pseudo_labels(
    image_feats: torch.Tensor, text_feats: torch.Tensor, image_ids: np.ndarray, cfg: CfgNode
) -> PseudoLabels:
    """Cluster the image and text features of the N pairs and apply OPLM
    (``MODEL.CPCL.CLUSTER`` / ``MODEL.CPCL.OPLM``).

    Args:
        image_feats, text_feats: ``[N, D]`` features of every training pair in pair order.
        image_ids: ``[N]`` image id of each pair (for image de-duplication and OPLM units).
    """
    c, oplm = cfg.MODEL.CPCL.CLUSTER, cfg.MODEL.CPCL.OPLM
    check_choice("MODEL.CPCL.OPLM.NAME", oplm.NAME, OPLM_NAMES)
    kwargs = dict(k1=c.K1, k2=c.K2, eps=c.EPS, min_samples=c.MIN_SAMPLES, backend=c.KNN_BACKEND)
    kwargs.update(knn_ef=c.KNN_HNSW_EF, knn_nprobe=c.KNN_IVF_NPROBE)
    stats: Dict[str, float] = {}
    image_ids = np.asarray(image_ids)
    if c.DEDUP_IMAGES:
        _, first, unit = np.unique(image_ids, return_index=True, return_inverse=True)
        unit = unit.reshape(-1)
    else:
        first, unit = np.arange(len(image_ids)), np.arange(len(image_ids))
    image_unit_feats = image_feats[torch.from_numpy(first)]

    timings: Dict[str, float] = {}
    unit_labels = cluster_pseudo_labels(image_unit_feats, timings=timings, **kwargs)
    stats.update({f"time_image_{k}": v for k, v in timings.items()})
    timings = {}
    text_labels = cluster_pseudo_labels(text_feats, timings=timings, **kwargs)
    stats.update({f"time_text_{k}": v for k, v in timings.items()})
    image_labels = unit_labels[unit]
    stats["image_clusters"], stats["image_outliers"] = label_counts(unit_labels)
    stats["text_clusters"], stats["text_outliers"] = label_counts(text_labels)

    t = time.perf_counter()
    min_sim = oplm.MIN_SIM if oplm.MIN_SIM > -1 else None
    image_labels, text_labels = outlier_pseudo_label_mining(
        image_labels,
        text_labels,
        image_feats,
        text_feats,
        oplm.NAME if oplm.ENABLED else "off",
        image_groups=unit,
        min_similarity=min_sim,
    )
    stats["time_oplm"] = time.perf_counter() - t
    unit_labels = np.full(len(first), -1, dtype=np.int64)
    unit_labels[unit] = image_labels
    stats["image_outliers_after_oplm"] = label_counts(unit_labels)[1]
    stats["text_outliers_after_oplm"] = label_counts(text_labels)[1]

    image_centroids = cluster_centroids(
        image_unit_feats, torch.from_numpy(unit_labels), int(stats["image_clusters"])
    )
    text_centroids = cluster_centroids(
        text_feats, torch.from_numpy(text_labels), int(stats["text_clusters"])
    )
    return PseudoLabels(image_labels, text_labels, image_centroids, text_centroids, stats)


def select_training_pairs(
    image_labels: np.ndarray, text_labels: np.ndarray, train_set: str, min_pairs: int
) -> np.ndarray:
    """Indices ``[M]`` of the pairs that train this epoch (``MODEL.CPCL.TRAIN_SET``).

    "either": image or text labelled; "both": both labelled; "all": every pair. When fewer than
    ``min_pairs`` would remain (e.g. early clusterings of a randomly initialised model), every
    pair is kept and a warning is logged.
    """
    check_choice("MODEL.CPCL.TRAIN_SET", train_set, TRAIN_SETS)
    iv, it = np.asarray(image_labels) >= 0, np.asarray(text_labels) >= 0
    keep = {"either": iv | it, "both": iv & it, "all": np.ones_like(iv)}[train_set]
    indices = np.flatnonzero(keep)
    if len(indices) < min_pairs:
        logger.warning(
            "MODEL.CPCL.TRAIN_SET=%s keeps %d pairs, fewer than one batch (%d): training on all %d "
            "pairs this epoch (outliers learn through ICPM's i == j positive)",
            train_set,
            len(indices),
            min_pairs,
            len(iv),
        )
        indices = np.arange(len(iv))
    return indices
