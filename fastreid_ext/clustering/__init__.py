"""Clustering for pseudo labels: exact kNN (approximate HNSW/IVF kNN opt-in), sparse k-reciprocal
Jaccard distance (and its dense reference), DBSCAN on a sparse radius graph, outlier pseudo-label
mining (OPLM)."""

from .dbscan import cluster_pseudo_labels, dbscan_labels, label_counts
from .dense_reference import dense_ranking, jaccard_distance_dense
from .distributed import distributed_exact_knn, row_slices
from .jaccard import (
    expansion_sets,
    jaccard_radius_graph,
    k_reciprocal_jaccard,
    query_expansion,
    reciprocal_neighbors,
)
from .knn import exact_knn, exact_knn_rows, l2_normalize
from .knn_approx import APPROX_BACKENDS, KNN_BACKENDS, approx_knn, knn_ranking
from .oplm import OPLM_MODES, mine_outliers, outlier_pseudo_label_mining

__all__ = [
    "cluster_pseudo_labels",
    "dbscan_labels",
    "label_counts",
    "dense_ranking",
    "jaccard_distance_dense",
    "expansion_sets",
    "jaccard_radius_graph",
    "k_reciprocal_jaccard",
    "query_expansion",
    "reciprocal_neighbors",
    "exact_knn",
    "exact_knn_rows",
    "distributed_exact_knn",
    "row_slices",
    "APPROX_BACKENDS",
    "KNN_BACKENDS",
    "approx_knn",
    "knn_ranking",
    "l2_normalize",
    "OPLM_MODES",
    "mine_outliers",
    "outlier_pseudo_label_mining",
]
