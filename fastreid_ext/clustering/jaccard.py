"""Sparse k-reciprocal Jaccard distance (Zhong et al. re-ranking as used by cluster-contrast).

Definition (cluster-contrast ``compute_jaccard_distance``; text-reid.md §2.3 step 2), for
L2-normalised features and the ranking of :func:`exact_knn` (k1 neighbours, self included):

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

from .knn import exact_knn, l2_normalize, pair_cosine64

__all__ = [
    "reciprocal_neighbors",
    "expansion_sets",
    "expansion_weights",
    "query_expansion",
    "jaccard_radius_graph",
    "k_reciprocal_jaccard",
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
        # first occurrence of every key (duplicates share the stamp of their last writer)
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


def _jaccard_from_overlap(m: np.ndarray) -> np.ndarray:
    """``max(1 - m / (2 - m), 0)`` in float64, rounded to float32."""
    return np.maximum(1.0 - m / (2.0 - m), 0.0).astype(np.float32)


def _csc_order(vqe: sp.csr_matrix):
    """Row of every CSR entry, and the CSR entry ids in CSC order (by column, then row)."""
    n, nnz = vqe.shape[0], vqe.nnz
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(vqe.indptr))
    ids = sp.csr_matrix(
        (np.arange(1, nnz + 1, dtype=np.float64), vqe.indices, vqe.indptr), shape=vqe.shape
    ).tocsc()
    ids.sort_indices()
    return rows, ids.data.astype(np.int64) - 1, ids.indptr.astype(np.int64)


def _heavy_entries(vqe: sp.csr_matrix, rows: np.ndarray, m_min: float) -> np.ndarray:
    """Mask ``[nnz]`` of each row's largest entries, as few as leave less than ``m_min`` of the
    row's mass outside. Any pair with overlap ``m >= m_min`` shares one of row i's heavy columns
    (otherwise ``m <= mass outside < m_min``)."""
    vals = vqe.data.astype(np.float64)
    counts = np.diff(vqe.indptr)
    order = np.argsort(rows - 0.5 * vals, kind="stable")  # by row, then value descending
    sorted_vals = vals[order]
    csum = np.cumsum(sorted_vals)
    row_start = np.concatenate([[0.0], csum])[vqe.indptr[:-1]]
    before = csum - sorted_vals - np.repeat(row_start, counts)
    total = np.repeat(np.bincount(rows, weights=vals, minlength=vqe.shape[0]), counts)
    heavy = np.empty(len(vals), dtype=bool)
    heavy[order] = total - before >= m_min - 1e-9  # mass from this entry on, inclusive
    return heavy


def jaccard_radius_graph(
    vqe: sp.csr_matrix, max_distance: float, chunk_rows: int = 256
) -> sp.csr_matrix:
    """Symmetric CSR ``[N, N]`` float32 of the Jaccard distances ``<= max_distance`` (the
    diagonal always stored, even when larger).

    For each row chunk, every triple (i, k, j) with ``V_qe[i, k] > 0``, ``V_qe[j, k] > 0`` and
    ``j > i`` is enumerated column-wise and the ``min`` values are accumulated per (i, j) in a
    reusable ``[chunk, N]`` float64 buffer. The sums are read back only at triples through one
    of row i's heavy columns (:func:`_heavy_entries`), which every pair within ``max_distance``
    has, and the touched entries are reset.
    """
    n = vqe.shape[0]
    vqe = sp.csr_matrix(vqe, dtype=np.float32)
    vqe.sort_indices()
    indptr = vqe.indptr.astype(np.int64)
    cols = vqe.indices.astype(np.int64)
    vals = vqe.data
    rows, order, c_ptr = _csc_order(vqe)
    c_rows, c_vals = rows[order], vals[order]
    csc_pos = np.empty(len(cols), dtype=np.int64)
    csc_pos[order] = np.arange(len(cols))

    # overlap needed for d <= max_distance, with slack: the final test is on float32 values
    m_min = 2.0 * (1.0 - max_distance) / (2.0 - max_distance) - 1e-6 if max_distance < 1 else 0.0
    heavy = _heavy_entries(vqe, rows, m_min) if m_min > 0 else np.ones(len(cols), dtype=bool)
    acc = np.zeros(min(chunk_rows, n) * n, dtype=np.float64)
    out_i, out_j, out_d = [], [], []
    for s in range(0, n, chunk_rows):
        e = min(s + chunk_rows, n)
        p0, p1 = indptr[s], indptr[e]
        start = csc_pos[p0:p1] + 1  # later entries of the column: rows j > i
        length = c_ptr[cols[p0:p1] + 1] - start
        total = int(length.sum())
        if total == 0:
            continue
        idx = np.repeat(start - (np.cumsum(length) - length), length)
        idx += np.arange(total)
        m = np.minimum(np.repeat(vals[p0:p1], length), c_vals[idx]).astype(np.float64)
        key = np.repeat((rows[p0:p1] - s) * n, length)
        key += c_rows[idx]
        np.add.at(acc, key, m)
        probe = key[np.repeat(heavy[p0:p1], length)]
        got = acc[probe]
        acc[key] = 0.0
        probe, first = np.unique(probe[got >= m_min], return_index=True)
        d = _jaccard_from_overlap(got[got >= m_min][first])
        keep = d <= np.float32(max_distance) + np.float32(1e-6)
        out_i.append(probe[keep] // n + s)
        out_j.append(probe[keep] % n)
        out_d.append(d[keep])
    i = np.concatenate(out_i) if out_i else np.zeros(0, dtype=np.int64)
    j = np.concatenate(out_j) if out_j else np.zeros(0, dtype=np.int64)
    d = np.concatenate(out_d) if out_d else np.zeros(0, dtype=np.float32)
    diag = _jaccard_from_overlap(np.bincount(rows, weights=vals.astype(np.float64), minlength=n))
    ar = np.arange(n, dtype=np.int64)
    graph = sp.csr_matrix(
        (np.concatenate([d, d, diag]), (np.concatenate([i, j, ar]), np.concatenate([j, i, ar]))),
        shape=(n, n),
        dtype=np.float32,
    )
    graph.sort_indices()
    return graph


def k_reciprocal_jaccard(
    features,
    k1: int = 30,
    k2: int = 6,
    max_distance: float = 1.0,
    backend: str = "auto",
    timings: Optional[Dict[str, float]] = None,
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distances of ``features`` ``[N, D]`` (see module docstring).

    Args:
        k1, k2: re-ranking parameters (cluster-contrast: 30 and 6).
        max_distance: pairs farther than this are not stored (use the DBSCAN eps); with 1.0 every
            pair sharing support is stored.
        backend: kNN backend of :func:`exact_knn`.
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
    ranking = exact_knn(x, k1, backend)
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
