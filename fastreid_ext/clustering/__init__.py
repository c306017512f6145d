"""Clustering for pseudo labels: exact kNN, sparse k-reciprocal Jaccard distance (and its dense
reference), DBSCAN on a sparse radius graph, outlier pseudo-label mining (OPLM)."""

from .dbscan import cluster_pseudo_labels, dbscan_labels, label_counts
from .dense_reference import dense_ranking, jaccard_distance_dense
from .jaccard import (
    expansion_sets,
    jaccard_radius_graph,
    k_reciprocal_jaccard,
    query_expansion,
    reciprocal_neighbors,
)
from .knn import exact_knn, l2_normalize
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
    "l2_normalize",
    "OPLM_MODES",
    "mine_outliers",
    "outlier_pseudo_label_mining",
]
