"""k-reciprocal Jaccard distance: the sparse implementation against a brute-force reading of the
definition and against the dense reference; exact kNN ranking on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fastreid_ext.clustering import (
    dense_ranking,
    exact_knn,
    expansion_sets,
    jaccard_distance_dense,
    jaccard_radius_graph,
    k_reciprocal_jaccard,
    query_expansion,
)
from fastreid_ext.clustering.jaccard import expansion_weights


def _features(n: int, d: int, seed: int, duplicates: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 6, 1), d))
    x = centers[rng.integers(0, len(centers), n)] + 0.8 * rng.standard_normal((n, d))
    if duplicates:  # exact ties in the ranking
        x[5] = x[7]
        x[11] = x[3]
        x[12] = x[3]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def brute_force_jaccard(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The definition (Zhong et al., CVPR 2017, Sec. 3; cluster-contrast's
    ``compute_jaccard_distance``) with Python sets and float64 everywhere."""
    x = x.astype(np.float64)
    n = len(x)
    sims = x @ x.T
    rank = [sorted(range(n), key=lambda j, i=i: (-sims[i, j], j))[:k1] for i in range(n)]

    def recip(i: int, k: int) -> set:
        c = min(k + 1, k1)
        return {j for j in rank[i][:c] if i in rank[j][:c]}

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        expansion = set(r)
        for c in r:
            rc = recip(c, int(np.around(k1 / 2)))
            if len(rc & r) > 2 / 3 * len(rc):
                expansion |= rc
        idx = sorted(expansion)
        w = np.exp(-(2 - 2 * sims[i, idx]))
        v[i, idx] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i][:k2]].mean(axis=0) for i in range(n)])
    dist = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            m = np.minimum(v[i], v[j]).sum()
            dist[i, j] = max(1 - m / (2 - m), 0.0)
    return dist


def _to_dense(graph: sp.csr_matrix) -> np.ndarray:
    coo = graph.tocoo()
    full = np.ones(graph.shape, dtype=np.float32)
    full[coo.row, coo.col] = coo.data
    return full


@pytest.mark.parametrize("n,k1,k2,seed", [(40, 8, 3, 0), (60, 30, 6, 1), (25, 30, 1, 2)])
def test_sparse_jaccard_equals_brute_force_definition(n, k1, k2, seed):
    x = _features(n, 16, seed)
    expected = brute_force_jaccard(x, k1, k2)
    graph = k_reciprocal_jaccard(x, k1, k2, max_distance=1.0)
    got = _to_dense(graph)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert (expected < 1).sum() > n  # the test exercises shared supports, not only the diagonal
    # every pair with shared support is stored, pairs without are exactly 1
    stored = np.zeros((n, n), dtype=bool)
    stored[graph.tocoo().row, graph.tocoo().col] = True
    assert np.array_equal(
        stored | np.eye(n, dtype=bool), (expected < 1 - 1e-9) | np.eye(n, dtype=bool)
    )


@pytest.mark.parametrize("duplicates", [False, True])
def test_sparse_jaccard_is_bitwise_equal_to_dense_reference(duplicates):
    x = _features(300, 24, 3, duplicates)
    dense = jaccard_distance_dense(x, 30, 6)
    assert np.array_equal(_to_dense(k_reciprocal_jaccard(x, 30, 6, max_distance=1.0)), dense)
    for eps in (0.6, 0.45):
        graph = k_reciprocal_jaccard(x, 30, 6, max_distance=eps).tocoo()
        assert np.array_equal(graph.data, dense[graph.row, graph.col])
        within = np.zeros(dense.shape, dtype=bool)
        within[graph.row, graph.col] = True
        # exactly the pairs within eps (plus the always-stored diagonal)
        assert np.array_equal(within, (dense <= eps) | np.eye(len(x), dtype=bool))


def test_radius_graph_is_symmetric_with_zero_diagonal():
    graph = k_reciprocal_jaccard(_features(120, 16, 4), 20, 6, max_distance=0.6)
    assert (graph != graph.T).nnz == 0
    assert np.all(graph.diagonal() < 1e-6)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_knn_matches_stable_dense_ranking_with_ties(backend):
    x = _features(500, 32, 5, duplicates=True)
    ranking = exact_knn(x, 30, backend=backend)
    assert np.array_equal(ranking, dense_ranking(x, 30))
    # duplicates: row 12 equals rows 3 and 11, so 3 ranks before 11 before 12 in each of them
    assert list(ranking[12][:3]) == [3, 11, 12]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_knn_with_ties_beyond_the_candidate_margin(backend):
    # 60 identical samples: every row's near-tie zone runs past the k + margin candidates
    x = _features(200, 16, 7)
    x[100:160] = x[100]
    ranking = exact_knn(x, 30, backend=backend, margin=8)
    assert np.array_equal(ranking, dense_ranking(x, 30))
    assert list(ranking[150]) == list(range(100, 130))


def test_exact_knn_fewer_samples_than_k():
    x = _features(7, 8, 6)
    assert exact_knn(x, 30).shape == (7, 7)
    graph = k_reciprocal_jaccard(x, 30, 6, max_distance=0.6)
    assert graph.shape == (7, 7)


def test_bad_features_raise_clear_errors():
    with pytest.raises(ValueError, match="zero or non-finite"):
        k_reciprocal_jaccard(np.zeros((5, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        k_reciprocal_jaccard(np.zeros(5, dtype=np.float32))


@pytest.mark.parametrize("eps", [1.0, 0.6])
def test_jaccard_radius_graph_is_independent_of_the_triple_cap(eps):
    x = _features(200, 16, 8)
    ranking = exact_knn(x, 20)
    indptr, indices = expansion_sets(ranking)
    v = sp.csr_matrix((expansion_weights(x, indptr, indices), indices, indptr), shape=(200, 200))
    vqe = query_expansion(v, ranking, 6)
    reference = jaccard_radius_graph(vqe, eps, chunk_rows=10**6, max_triples=10**9)
    assert reference.nnz > 5 * 200
    # rows hold up to ~4k triples: several rows per chunk (cap 20k, or 3 rows), and single rows
    # enumerated in pieces (cap 1,000)
    for chunk_rows, cap in ((256, 20_000), (3, 10**9), (256, 1_000)):
        got = jaccard_radius_graph(vqe, eps, chunk_rows=chunk_rows, max_triples=cap)
        assert np.array_equal(got.indptr, reference.indptr)
        assert np.array_equal(got.indices, reference.indices)
        assert np.array_equal(got.data, reference.data)
