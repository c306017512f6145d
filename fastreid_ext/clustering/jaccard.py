"""Sparse k-reciprocal Jaccard distance (Zhong et al. re-ranking as used by cluster-contrast).

Definition: k-reciprocal encoding of Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017, Sec. 3 (k-reciprocal neighbours, their expansion, Gaussian
weights, local query expansion, Jaccard distance), as implemented by ``compute_jaccard_distance``
in cluster-contrast's ``clustercontrast/utils/faiss_rerank.py`` (github.com/alibaba/
cluster-contrast-reid), the pseudo-label distance of CPCL's clustering step. For L2-normalised
features and the ranking of :func:`exact_knn` (k1 neighbours, self included):

* ``R(i, k) = {j in rank_i[:c] : i in rank_j[:c]}`` with ``c = min(k + 1, k1)``;
* expansion: ``R*(i) = R(i, k1)`` united with ``R(c, round(k1 / 2))`` of every ``c in R(i, k1)``
  whose overlap with ``R(i, k1)`` exceeds 2/3 of its size;
* ``V[i, R*(i)] = softmax(-(2 - 2 cos))``; query expansion ``V_qe[i] = mean(V[rank_i[:k2]])``;
* ``d(i, j) = 1 - m / (2 - m)`` with ``m = sum_k min(V_qe[i, k], V_qe[j, k])``, clipped at 0.

Two samples whose ``V_qe`` supports are disjoint are at distance exactly 1, so only pairs that
share support are computed and only pairs with ``d <= max_distance`` are stored: a sparse radius
graph for DBSCAN. No ``N x N`` array is ever built.

Numerics (shared with the dense reference in :mod:`.dense_reference`, so both give identical
float32 distances): cosines and softmax in float64, ``V`` and ``V_qe`` rounded to float32, every
sum of ``V`` values accumulated in float64 (exact for these magnitudes, hence order-free).
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from .knn import l2_normalize, pair_cosine64
from .knn_approx import knn_ranking
from .radius_graph import MAX_TRIPLES, jaccard_radius_graph

__all__ = [
    "reciprocal_neighbors",
    "expansion_sets",
    "expansion_weights",
    "query_expansion",
    "jaccard_radius_graph",
    "k_reciprocal_jaccard",
    "MAX_TRIPLES",
]


def reciprocal_neighbors(
    ranking: np.ndarray, k: int, pad: int = -1, chunk: int = 8192
) -> Tuple[np.ndarray, np.ndarray]:
    """``R(i, k)`` for every row as a padded array ``[N, c]`` (``c = min(k + 1, k1)``; entries
    that are not reciprocal are ``pad``) and the set sizes ``[N]``."""
    n, k1 = ranking.shape
    c = min(k + 1, k1)
    fwd = ranking[:, :c]
    ok = np.empty(fwd.shape, dtype=bool)
    for s in range(0, n, chunk):
        back = ranking[fwd[s : s + chunk], :c]  # [b, c, c]
        own = np.arange(s, s + len(back))[:, None, None]
        ok[s : s + chunk] = (back == own).any(-1)
    return np.where(ok, fwd, pad), ok.sum(1)


def expansion_sets(ranking: np.ndarray, chunk: int = 512) -> Tuple[np.ndarray, np.ndarray]:
    """The k-reciprocal expansion ``R*(i)`` of every row as CSR structure ``(indptr, indices)``
    with sorted column indices. ``ranking`` is ``[N, k1]``.

    Set membership uses a reusable ``[chunk, N]`` marker array instead of pairwise comparisons.
    """
    n, k1 = ranking.shape
    r1, _ = reciprocal_neighbors(ranking, k1, pad=-1)
    rh, rh_len = reciprocal_neighbors(ranking, int(np.around(k1 / 2)), pad=-2)
    chunk = min(chunk, n)
    mark = np.zeros(chunk * n, dtype=bool)
    stamp = np.zeros(chunk * n, dtype=np.int32)
    counts, parts = [], []
    for s in range(0, n, chunk):
        a = r1[s : s + chunk]  # [b, k1] candidates c (or -1)
        b = len(a)
        local = np.arange(b, dtype=np.int64)[:, None] * n
        valid = a >= 0
        own = (local + a)[valid]
        mark[own] = True
        safe = np.where(valid, a, 0)
        cand = rh[safe]  # [b, k1, kh]: R(c, round(k1/2)) of each candidate (pads -2)
        cand_ok = cand >= 0
        inside = mark[np.where(cand_ok, local[:, :, None] + cand, 0)] & cand_ok
        mark[own] = False
        # cluster-contrast's test: len(intersect) > 2/3 * len(R(c, k1/2)), in float
        accept = valid & (inside.sum(-1) > (2.0 / 3.0) * rh_len[safe])
        extra = (local[:, :, None] + cand)[accept[..., None] & cand_ok]
        keys = np.concatenate([own, extra])
        # one copy of every key: all occurrences of a key read back the single stamp that
        # survived the assignment (in practice the last one's), so exactly one occurrence passes
        order = np.arange(len(keys), dtype=np.int32)
        stamp[keys] = order
        keys = np.sort(keys[stamp[keys] == order])
        counts.append(np.bincount(keys // n, minlength=b))
        parts.append(keys % n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    return indptr, np.concatenate(parts).astype(np.int64)


def _segment_softmax(logits: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    counts = np.diff(indptr)
    out = np.empty_like(logits)
    nonempty = counts > 0
    if not nonempty.any():
        return out
    starts = indptr[:-1][nonempty]
    mx = np.maximum.reduceat(logits, starts)
    e = np.exp(logits - np.repeat(mx, counts[nonempty]))
    out[:] = e / np.repeat(np.add.reduceat(e, starts), counts[nonempty])
    return out


def expansion_weights(x: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Float32 ``V`` values of the CSR structure ``(indptr, indices)``: per row, softmax over
    ``R*(i)`` of ``-(2 - 2 cos)`` with float64 cosines of the L2-normalised ``x`` ``[N, D]``."""
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    cos = pair_cosine64(x, rows, indices)
    return _segment_softmax(-(2.0 - 2.0 * cos), indptr).astype(np.float32)


def query_expansion(v: sp.csr_matrix, ranking: np.ndarray, k2: int) -> sp.csr_matrix:
    """``V_qe[i] = mean(V[rank_i[:k2]])`` as float32 CSR (sums in float64: exact)."""
    n = v.shape[0]
    if k2 == 1:
        return v
    k2 = min(k2, ranking.shape[1])
    q = sp.csr_matrix(
        (np.ones(n * k2), ranking[:, :k2].reshape(-1), np.arange(0, n * k2 + 1, k2)),
        shape=(n, n),
    )
    out = (q @ v.astype(np.float64)).tocsr()
    out.data = (out.data / k2).astype(np.float32)
    out = out.astype(np.float32)
    out.sort_indices()
    return out


def k_reciprocal_jaccard(
    features,
    k1: int = 30,
    k2: int = 6,
    max_distance: float = 1.0,
    backend: str = "auto",
    timings: Optional[Dict[str, float]] = None,
    knn_ef: int = 128,
    knn_nprobe: int = 128,
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distances of ``features`` ``[N, D]`` (see module docstring).

    Args:
        k1, k2: re-ranking parameters (cluster-contrast: 30 and 6).
        max_distance: pairs farther than this are not stored (use the DBSCAN eps); with 1.0 every
            pair sharing support is stored.
        backend: kNN backend: exact "auto"/"torch"/"faiss" (:func:`.knn.exact_knn`) or
            approximate "hnsw"/"ivf" (:func:`.knn_approx.approx_knn`).
        knn_ef, knn_nprobe: search breadth of the "hnsw" / "ivf" backends.
        timings: if given, receives seconds per stage ("knn", "reciprocal_expansion",
            "jaccard").
    Returns:
        ``[N, N]`` symmetric float32 CSR; the diagonal is always stored.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    timings = timings if timings is not None else {}
    t = time.perf_counter()
    x = l2_normalize(features)
    ranking = knn_ranking(x, k1, backend, ef=knn_ef, nprobe=knn_nprobe)
    timings["knn"] = time.perf_counter() - t

    t = time.perf_counter()
    indptr, indices = expansion_sets(ranking)
    data = expansion_weights(x, indptr, indices)
    n = x.shape[0]
    v = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    vqe = query_expansion(v, ranking, k2)
    timings["reciprocal_expansion"] = time.perf_counter() - t

    t = time.perf_counter()
    graph = jaccard_radius_graph(vqe, max_distance)
    timings["jaccard"] = time.perf_counter() - t
    return graph
