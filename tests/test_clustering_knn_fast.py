"""Exact kNN by chunked float32 products: identical to the stable float64 ranking (and hence the
same pseudo labels as the dense reference) on duplicated features, exactly equal similarities
and similarities closer than float32 can resolve; row slices (the DDP split) agree with the
whole; the approximate HNSW/IVF opt-in paths."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from fastreid_ext.clustering import (
    approx_knn,
    cluster_pseudo_labels,
    dbscan_labels,
    dense_ranking,
    exact_knn,
    exact_knn_rows,
    jaccard_distance_dense,
    knn_ranking,
    l2_normalize,
)
from fastreid_ext.clustering.knn import float32_dot_error_bound, knn_candidates

BACKENDS = ["torch", "faiss"]


def _clustered(n: int, d: int, seed: int, spread: float = 0.8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 6, 1), d))
    x = centers[rng.integers(0, len(centers), n)] + spread * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _near_ties(n: int, d: int, seed: int, scale: float = 2e-4) -> np.ndarray:
    """Groups of 12 samples within ``scale`` of a common direction: inside a group the cosines
    differ by ~scale^2, far below float32 resolution near 1 (6e-8)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 12 + 1, d))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    x = base[np.arange(n) // 12] + scale * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("margin", [0, 2, 8])
def test_duplicated_features_rank_by_index(backend, margin):
    # groups of 1..40 identical rows: runs of exact ties longer than k + margin candidates
    x = _clustered(300, 24, 0)
    sizes = [40, 3, 2, 17]
    start = 0
    for s in sizes:
        x[start : start + s] = x[start]
        start += 60
    ranking = exact_knn(x, 30, backend=backend, margin=margin)
    assert np.array_equal(ranking, dense_ranking(x, 30))
    assert list(ranking[39]) == list(range(30))  # 40 duplicates of row 0: lowest indices first
    assert list(ranking[121][:2]) == [120, 121]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exactly_equal_similarities_are_ordered_by_index(backend):
    # row 0 = e_0; rows 1..24 = c e_0 + s e_j (distinct axes): cosine to row 0 exactly c for all
    d, c = 64, np.float32(0.75)
    s = np.float32(np.sqrt(1 - c * c))
    x = np.zeros((40, d), dtype=np.float32)
    x[0, 0] = 1.0
    for i in range(1, 25):
        x[i, 0], x[i, i] = c, s
    rng = np.random.default_rng(1)
    x[25:] = rng.standard_normal((15, d)).astype(np.float32)
    x[25:, 0] = 0.0  # orthogonal to row 0
    x = l2_normalize(x)
    ranking = exact_knn(x, 20, backend=backend, margin=1)
    assert np.array_equal(ranking, dense_ranking(x, 20))
    assert list(ranking[0]) == list(range(20))


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_below_float32_resolution_follow_float64(backend):
    x = _near_ties(240, 512, 2)
    n, dim = x.shape
    sims, cand = knn_candidates(x, 12, backend)
    reference = dense_ranking(x, 12)
    # the float32 order alone is wrong here, so the float64 step is exercised
    assert not np.array_equal(cand, reference)
    gaps = np.diff(sims.astype(np.float64), axis=1)
    assert (np.abs(gaps) <= 2 * float32_dot_error_bound(dim)).mean() > 0.5
    assert np.array_equal(exact_knn(x, 12, backend=backend, margin=3), reference)
    assert np.array_equal(exact_knn(x, 30, backend=backend), dense_ranking(x, 30))


def test_query_row_slices_concatenate_to_the_full_ranking():
    x = l2_normalize(_clustered(500, 32, 3))
    x[10:50] = x[10]  # ties across slice borders
    full = exact_knn(x, 30)
    parts = [exact_knn_rows(x, 30, s, min(s + 137, 500)) for s in range(0, 500, 137)]
    assert np.array_equal(np.concatenate(parts), full)
    assert np.array_equal(exact_knn_rows(x, 30, 0, 500, backend="faiss"), full)


@pytest.mark.parametrize("maker", ["duplicates", "near_ties"])
def test_pseudo_labels_equal_the_dense_reference_on_tied_data(maker):
    if maker == "duplicates":
        x = _clustered(300, 32, 4)
        x[20:30] = x[20]
        x[100:104] = x[7]
    else:
        x = np.concatenate([_near_ties(120, 64, 5), _clustered(180, 64, 6)])
    labels = cluster_pseudo_labels(x, 30, 6, 0.6, 4)
    reference = dbscan_labels(jaccard_distance_dense(x, 30, 6), 0.6, 4)
    assert np.array_equal(labels, reference)
    assert labels.max() >= 1  # more than one cluster: the comparison is not trivial


@pytest.mark.parametrize("backend", ["hnsw", "ivf"])
def test_approximate_knn_orders_its_candidates_exactly(backend):
    x = _clustered(2000, 32, 7, spread=0.5)
    x[5:9] = x[5]
    exact = exact_knn(x, 30)
    approx = approx_knn(x, 30, backend, ef=256, nprobe=64)
    # high recall at this breadth; a found neighbour set is ordered by the exact rule
    recall = np.mean([len(np.intersect1d(a, e)) / 30 for a, e in zip(approx, exact)])
    assert recall > 0.95
    same_set = [i for i in range(len(x)) if set(approx[i]) == set(exact[i])]
    assert len(same_set) > 1000
    assert np.array_equal(approx[same_set], exact[same_set])
    assert list(approx[8][:4]) == [5, 6, 7, 8]
    labels = cluster_pseudo_labels(x, backend=backend, knn_ef=256, knn_nprobe=64)
    assert adjusted_rand_score(cluster_pseudo_labels(x), labels) > 0.95


def test_knn_backend_errors_name_the_choices():
    x = _clustered(50, 8, 8)
    with pytest.raises(ValueError, match="'hnsw', 'ivf'"):
        knn_ranking(x, 10, "annoy")
    with pytest.raises(ValueError, match="ef and nprobe"):
        approx_knn(x, 10, "hnsw", ef=0)
