"""Straightforward dense k-reciprocal Jaccard distance (cluster-contrast's algorithm, N x N arrays).

A reference for tests and for ``tools/benchmark_cpcl_clustering.py``: full float64 similarity
rows sorted stably for the ranking, per-sample Python loops for the k-reciprocal sets, dense
``V``/``V_qe`` and an inverted index for the Jaccard sums. It uses the same numerics as
:mod:`.jaccard` (float64 cosines and sums, float32 ``V`` and distances), so on the same features
both give identical distances and identical DBSCAN labels. Memory is ``O(N^2)``: use it only for
a few thousand (tests) to ~20k (benchmark) samples.
"""

from __future__ import annotations

import numpy as np

from .knn import l2_normalize

__all__ = ["dense_ranking", "jaccard_distance_dense"]


def dense_ranking(features, k: int, chunk: int = 1024) -> np.ndarray:
    """``[N, k]`` neighbours by float64 cosine from full similarity rows (stable sort: ties go to
    the lower index)."""
    x64 = l2_normalize(features).astype(np.float64)
    n = len(x64)
    k = min(k, n)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, chunk):
        sims = x64[s : s + chunk] @ x64.T
        out[s : s + chunk] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return out


def jaccard_distance_dense(features, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense ``[N, N]`` float32 k-reciprocal Jaccard distance matrix of ``features`` ``[N, D]``."""
    x64 = l2_normalize(features).astype(np.float64)
    n = len(x64)
    ranking = dense_ranking(x64, k1)

    def k_reciprocal(i: int, k: int) -> np.ndarray:
        forward = ranking[i, : k + 1]
        backward = ranking[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    nn_k1 = [k_reciprocal(i, k1) for i in range(n)]
    nn_half = [k_reciprocal(i, int(np.around(k1 / 2))) for i in range(n)]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        recip = nn_k1[i]
        expansion = recip
        for c in recip:
            cand = nn_half[c]
            if len(np.intersect1d(cand, recip)) > 2 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        logits = -(2.0 - 2.0 * (x64[expansion] @ x64[i]))
        w = np.exp(logits - logits.max())
        v[i, expansion] = (w / w.sum()).astype(np.float32)

    if k2 != 1:
        k2 = min(k2, ranking.shape[1])
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = (v[ranking[i, :k2]].astype(np.float64).sum(axis=0) / k2).astype(np.float32)
        v = v_qe
        del v_qe

    vt = np.ascontiguousarray(v.T)
    inv_index = [np.nonzero(vt[k])[0] for k in range(n)]
    del vt
    jaccard = np.empty((n, n), dtype=np.float32)
    for i in range(n):
        overlap = np.zeros(n, dtype=np.float64)
        for k in np.nonzero(v[i])[0]:
            rows = inv_index[k]
            overlap[rows] += np.minimum(v[i, k], v[rows, k])
        jaccard[i] = np.maximum(1.0 - overlap / (2.0 - overlap), 0.0).astype(np.float32)
    return jaccard
