"""DBSCAN on precomputed distances (a sparse radius graph or a dense matrix) via scikit-learn."""

from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from .jaccard import k_reciprocal_jaccard

__all__ = ["dbscan_labels", "label_counts", "cluster_pseudo_labels"]


def dbscan_labels(distances, eps: float = 0.6, min_samples: int = 4) -> np.ndarray:
    """DBSCAN labels ``[N]`` (``-1`` = outlier, clusters ``0..K-1``) of a precomputed distance
    matrix: a dense ``[N, N]`` array or a sparse radius graph holding at least every pair with
    distance ``<= eps`` (absent pairs are not neighbours; the point itself always counts)."""
    n = distances.shape[0]
    if distances.ndim != 2 or distances.shape[1] != n:
        raise ValueError(f"distances must be square [N, N], got {distances.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if sp.issparse(distances):
        distances = sp.csr_matrix(distances)
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    return model.fit_predict(distances).astype(np.int64)


def label_counts(labels: np.ndarray) -> Tuple[int, int]:
    """``(number of clusters, number of outliers)`` of a label vector with ``-1`` outliers."""
    labels = np.asarray(labels)
    clustered = labels[labels >= 0]
    return int(len(np.unique(clustered))), int((labels < 0).sum())


def cluster_pseudo_labels(
    features,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 4,
    backend: str = "auto",
    timings: Optional[Dict[str, float]] = None,
    knn_ef: int = 128,
    knn_nprobe: int = 128,
) -> np.ndarray:
    """Pseudo labels ``[N]`` of ``features`` ``[N, D]``: sparse k-reciprocal Jaccard distance
    (k1, k2) then DBSCAN(eps, min_samples). ``timings`` receives seconds per stage ("knn",
    "reciprocal_expansion", "jaccard", "dbscan"). ``backend``, ``knn_ef``, ``knn_nprobe``: see
    :func:`.jaccard.k_reciprocal_jaccard`."""
    timings = timings if timings is not None else {}
    graph = k_reciprocal_jaccard(
        features,
        k1,
        k2,
        max_distance=eps,
        backend=backend,
        timings=timings,
        knn_ef=knn_ef,
        knn_nprobe=knn_nprobe,
    )
    t = time.perf_counter()
    labels = dbscan_labels(graph, eps, min_samples)
    timings["dbscan"] = time.perf_counter() - t
    return labels
