"""Sparse Jaccard radius graph from the query-expanded k-reciprocal weights ``V_qe``.

Part of :mod:`.jaccard` (see its docstring for the definition and the numerics): only pairs that
share support in ``V_qe`` can be closer than 1, and only pairs within ``max_distance`` are kept.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["MAX_TRIPLES", "jaccard_radius_graph"]

#: Default cap on the (i, k, j) triples enumerated at once by :func:`jaccard_radius_graph`
#: (about 40 bytes each in temporaries: some 600 MB at the cap).
MAX_TRIPLES = 16_000_000


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


def _row_chunks(row_triples: np.ndarray, max_rows: int, max_triples: int):
    """``(start, stop)`` row ranges of at most ``max_rows`` rows and at most ``max_triples``
    triples each; a row with more triples than that forms a chunk alone."""
    n = len(row_triples)
    ends = np.cumsum(row_triples)
    s = 0
    while s < n:
        base = ends[s - 1] if s else 0
        e = min(int(np.searchsorted(ends, base + max_triples, "right")), s + max_rows, n)
        e = max(e, s + 1)
        yield s, e
        s = e


def jaccard_radius_graph(
    vqe: sp.csr_matrix,
    max_distance: float,
    chunk_rows: int = 256,
    max_triples: int = MAX_TRIPLES,
) -> sp.csr_matrix:
    """Symmetric CSR ``[N, N]`` float32 of the Jaccard distances ``<= max_distance`` (the
    diagonal always stored, even when larger).

    For each row chunk, every triple (i, k, j) with ``V_qe[i, k] > 0``, ``V_qe[j, k] > 0`` and
    ``j > i`` is enumerated column-wise and the ``min`` values are accumulated per (i, j) in a
    reusable ``[chunk, N]`` float64 buffer. The sums are read back only at triples through one
    of row i's heavy columns (:func:`_heavy_entries`), which every pair within ``max_distance``
    has, and the touched entries are reset.

    Memory: a chunk holds at most ``chunk_rows`` rows and ``max_triples`` triples (rows are
    grouped adaptively from their triple counts; a single row with more triples is enumerated in
    pieces of ``max_triples``), so the temporaries stay under about ``40 * max_triples`` bytes
    whatever the density of ``V_qe``. The result does not depend on either limit.
    """
    if chunk_rows < 1 or max_triples < 1:
        raise ValueError(
            f"chunk_rows and max_triples must be >= 1, got {chunk_rows}, {max_triples}"
        )
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
    # triples of every entry: the later entries of its column (rows j > i)
    entry_start = csc_pos  # reused in place: csc_pos is not needed any more
    entry_start += 1
    entry_len = c_ptr[cols + 1] - entry_start
    row_triples = np.bincount(rows, weights=entry_len, minlength=n).astype(np.int64)

    # overlap needed for d <= max_distance, with slack: the final test is on float32 values
    m_min = 2.0 * (1.0 - max_distance) / (2.0 - max_distance) - 1e-6 if max_distance < 1 else 0.0
    heavy = _heavy_entries(vqe, rows, m_min) if m_min > 0 else np.ones(len(cols), dtype=bool)
    acc = np.zeros(min(chunk_rows, n) * n, dtype=np.float64)
    stamp = np.zeros(len(acc), dtype=np.int32)

    def _triples(ent: np.ndarray, within: np.ndarray, first_row: int):
        """Accumulator keys and ``min`` values of triple number ``within`` of entry ``ent``."""
        idx = entry_start[ent] + within
        m = np.minimum(vals[ent], c_vals[idx]).astype(np.float64)
        return (rows[ent] - first_row) * n + c_rows[idx], m

    out_i, out_j, out_d = [], [], []
    for s, e in _row_chunks(row_triples, chunk_rows, max_triples):
        p0, p1 = indptr[s], indptr[e]
        length = entry_len[p0:p1]
        total = int(length.sum())
        if total == 0:
            continue
        if total <= max_triples:
            # per entry: its value, row and heavy flag repeated over its triples (no gathers)
            idx = np.arange(total) + np.repeat(
                entry_start[p0:p1] - (np.cumsum(length) - length), length
            )
            m = np.minimum(np.repeat(vals[p0:p1], length), c_vals[idx]).astype(np.float64)
            key = np.repeat((rows[p0:p1] - s) * n, length) + c_rows[idx]
            np.add.at(acc, key, m)
            probe = key[np.repeat(heavy[p0:p1], length)]
            got = acc[probe]
            if (e - s) * n < 4 * total:
                acc[: (e - s) * n] = 0.0
            else:
                acc[key] = 0.0
            probe, got = probe[got >= m_min], got[got >= m_min]
            # one copy of every probed pair: all copies read back the one surviving stamp
            order = np.arange(len(probe), dtype=np.int32)
            stamp[probe] = order
            first = stamp[probe] == order
            probe, got = probe[first], got[first]
        else:  # a single row with more triples than the cap: enumerate it in pieces
            ends = np.cumsum(length)
            probes = []
            for t0 in range(0, total, max_triples):
                t = np.arange(t0, min(t0 + max_triples, total), dtype=np.int64)
                k = np.searchsorted(ends, t, "right")  # the entry holding flat triple t
                key, m = _triples(p0 + k, t - (ends[k] - length[k]), s)
                np.add.at(acc, key, m)
                probes.append(np.unique(key[heavy[p0 + k]]))
            probe = np.unique(np.concatenate(probes))
            got = acc[probe]
            acc[: (e - s) * n] = 0.0
            probe, got = probe[got >= m_min], got[got >= m_min]
        d = _jaccard_from_overlap(got)
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
