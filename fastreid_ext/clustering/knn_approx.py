"""Approximate cosine kNN for pseudo labels beyond one machine's patience (opt-in).

faiss graph (HNSW) or inverted-file (IVF) search proposes ``k + margin`` candidates per row; the
candidates are then ordered exactly as in :mod:`.knn` (float32 runs, float64 at near-ties,
index on exact ties), so the only approximation is which neighbours the index finds. Agreement
of the resulting partition with the exact one is measured by
``tools/benchmark_cpcl_clustering.py --approx`` (adjusted Rand index, NMI).

* ``"hnsw"``: ``IndexHNSWFlat`` (inner product, ``M = 32`` links per node), ``efConstruction =
  max(ef, 40)``, ``efSearch = max(ef, k + margin)``. Build ``O(N log N)``, no training.
* ``"ivf"``: ``IndexIVFFlat`` over ``nlist = 4 * sqrt(N)`` k-means cells (trained on at most
  ``256 * nlist`` samples), ``nprobe`` cells searched per query.
"""

from __future__ import annotations

import numpy as np

from .knn import EXACT_BACKENDS, _order_candidates, exact_knn, float32_dot_error_bound, l2_normalize

__all__ = ["APPROX_BACKENDS", "KNN_BACKENDS", "approx_knn", "knn_ranking"]

#: Approximate kNN searches (``MODEL.CPCL.CLUSTER.KNN_BACKEND``).
APPROX_BACKENDS = ("hnsw", "ivf")


def _faiss_index(x: np.ndarray, backend: str, ef: int, nprobe: int, width: int, seed: int):
    """A filled faiss index of ``x`` ``[N, D]`` for ``backend`` ("hnsw" or "ivf")."""
    import faiss

    n, dim = x.shape
    if backend == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(ef, 40)
        index.hnsw.efSearch = max(ef, width)
        index.add(x)
        return index
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = x if n <= 256 * nlist else x[np.sort(rng.choice(n, 256 * nlist, replace=False))]
    index.cp.seed = seed
    index.train(train)
    index.add(x)
    index.nprobe = min(max(nprobe, 1), nlist)
    return index


def approx_knn(
    features,
    k: int,
    backend: str = "hnsw",
    ef: int = 128,
    nprobe: int = 128,
    margin: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """Approximate ranking ``[N, k]`` int64 of ``features`` ``[N, D]`` (L2-normalised here).

    Args:
        k: neighbours per row, the row itself included (clipped to N).
        backend: "hnsw" or "ivf" (see the module docstring).
        ef: HNSW search (and construction) breadth; larger is more exact and slower.
        nprobe: IVF cells searched per query; larger is more exact and slower.
        margin: extra candidates per row beyond ``k``, ordered with the same exact rule.
        seed: IVF training sample and k-means seed.
    Returns:
        ranking ``[N, k]``: each row's candidates in the exact order (float64 cosine, then
        index); a row the index returns fewer than ``k`` neighbours for is a ``ValueError``.
    """
    if backend not in APPROX_BACKENDS:
        raise ValueError(
            f"approximate knn backend must be one of {APPROX_BACKENDS}, got {backend!r}"
        )
    if ef < 1 or nprobe < 1:
        raise ValueError(f"ef and nprobe must be >= 1, got ef={ef}, nprobe={nprobe}")
    x = l2_normalize(features)
    n, dim = x.shape
    k = min(k, n)
    width = min(k + max(margin, 0), n)
    index = _faiss_index(x, backend, ef, nprobe, width, seed)
    sims, cand = index.search(x, width)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    if (cand[:, :k] < 0).any():
        raise ValueError(
            f"the {backend} index found fewer than k={k} neighbours for some rows; "
            "raise ef / nprobe (MODEL.CPCL.CLUSTER.KNN_HNSW_EF / KNN_IVF_NPROBE)"
        )
    sims = np.where(cand >= 0, sims, -np.inf).astype(np.float32)
    cand = np.where(cand >= 0, cand, n)  # missing tail candidates sort last, never reach k
    tol = 2.0 * float32_dot_error_bound(dim)
    xpad = np.concatenate([x, np.zeros((1, dim), dtype=np.float32)])
    return _order_candidates(xpad, np.arange(n), sims, cand, k, tol)


#: Every kNN backend: exact ("auto", "faiss", "torch") and approximate ("hnsw", "ivf").
KNN_BACKENDS = EXACT_BACKENDS + APPROX_BACKENDS


def knn_ranking(x, k: int, backend: str = "auto", ef: int = 128, nprobe: int = 128) -> np.ndarray:
    """Ranking ``[N, k]`` of ``x`` ``[N, D]``: :func:`.knn.exact_knn` for the exact backends,
    :func:`approx_knn` (``ef``, ``nprobe``) for "hnsw" / "ivf"."""
    if backend in APPROX_BACKENDS:
        return approx_knn(x, k, backend, ef=ef, nprobe=nprobe)
    if backend not in EXACT_BACKENDS:
        raise ValueError(f"knn backend must be one of {KNN_BACKENDS}, got {backend!r}")
    return exact_knn(x, k, backend)
