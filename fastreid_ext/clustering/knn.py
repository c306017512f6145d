"""Exact cosine k-nearest-neighbour ranking (faiss on CPU, torch on CUDA) with a float64 tie-safe order.

The ranking of every row is defined as the order by (cosine similarity computed in float64
descending, neighbour index ascending). The fast float32 search only proposes ``k + margin``
candidates; their similarities are recomputed in float64 and re-sorted, so the result does not
depend on the backend (faiss, torch, CPU or GPU) nor on float32 rounding, and equals a stable
sort of the dense float64 similarity matrix. (GPU faiss is assumed to use plain float32 cuBLAS
products, its default; the torch path disables TF32 while searching.)
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

__all__ = [
    "l2_normalize",
    "knn_candidates",
    "pair_cosine64",
    "float32_dot_error_bound",
    "exact_knn",
]


def l2_normalize(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a C-contiguous float32 numpy array ``[N, D]``."""
    x = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else features
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(x.shape)}")
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("features contain a zero or non-finite row; cannot L2-normalise")
    return np.ascontiguousarray(x / norms.astype(np.float32))


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"knn backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "auto":
        if torch.cuda.is_available():
            return "torch"
        try:
            import faiss  # noqa: F401
        except ImportError:
            return "torch"
        return "faiss"
    return backend


def knn_candidates(
    x: np.ndarray, k: int, backend: str = "auto", chunk_size: int = 256
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest float32 inner products of each row (self included), sorted decreasing:
    ``(sims [N, k] float32, indices [N, k] int64)``.

    ``backend``: "faiss" (exact ``IndexFlatIP`` on CPU, or ``knn_gpu`` when faiss sees a GPU),
    "torch" (chunked ``mm`` + ``topk``; on CUDA when available) or "auto" (torch on CUDA, else
    faiss).
    """
    n = x.shape[0]
    k = min(k, n)
    backend = _resolve_backend(backend)
    if backend == "faiss":
        import faiss

        if faiss.get_num_gpus() > 0:
            res = faiss.StandardGpuResources()
            sims, idx = faiss.knn_gpu(res, x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            sims, idx = index.search(x, k)
        return np.asarray(sims, dtype=np.float32), np.ascontiguousarray(idx, dtype=np.int64)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    xt = torch.from_numpy(x).to(device)
    if device.type == "cuda":
        chunk_size = max(chunk_size, 4096)
    sims = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    # full float32 matmuls (no TF32): exact_knn relies on the float32 error bound
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for start in range(0, n, chunk_size):
            top = (xt[start : start + chunk_size] @ xt.t()).topk(k, dim=1)
            sims[start : start + chunk_size] = top.values.cpu().numpy()
            idx[start : start + chunk_size] = top.indices.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return sims, idx


def pair_cosine64(
    x: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """Float64 inner products ``x[rows[e]] . x[cols[e]]`` for every pair ``e`` (``[E]``).

    Products of float32 numbers are exact in float64, so only the final sum rounds. Chunks stay
    small: large temporary arrays are slow to allocate on some virtual machines.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), chunk):
        a = x[rows[s : s + chunk]].astype(np.float64)
        b = x[cols[s : s + chunk]].astype(np.float64)
        out[s : s + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def float32_dot_error_bound(dim: int) -> float:
    """Bound on ``|float32 dot - exact dot|`` for unit vectors of ``dim`` entries (``dim * u``
    with ``u = 2^-24``, plus 1 %), valid for any summation order."""
    return 1.01 * dim * 2.0**-24


def exact_knn(
    features: torch.Tensor | np.ndarray,
    k: int,
    backend: str = "auto",
    margin: int = 8,
) -> np.ndarray:
    """The first ``k`` neighbours of every row by float64 cosine, ties broken by lower index.

    The float32 search returns ``k + margin`` candidates. A row whose float32 similarities
    among its first ``k + 1`` are all separated by more than twice the float32 error bound
    already has the exact float64 order; the other rows are re-ranked from float64 cosines of
    their candidates (and from the whole set if the near-tie zone reaches the last candidate).

    Args:
        features: ``[N, D]`` features (L2-normalised here).
        k: neighbours per row, the row itself included (clipped to N).
        backend: float32 candidate search, see :func:`knn_candidates`.
        margin: extra float32 candidates.
    Returns:
        ranking ``[N, k]`` int64.
    """
    x = l2_normalize(features)
    n, dim = x.shape
    k = min(k, n)
    sims, cand = knn_candidates(x, min(k + max(margin, 0), n), backend)
    width = cand.shape[1]
    tol = 2.0 * float32_dot_error_bound(dim)
    gaps = sims[:, :-1].astype(np.float64) - sims[:, 1:]
    unsafe = np.flatnonzero((gaps[:, : min(k, width - 1)] <= tol).any(1))
    ranking = cand[:, :k].copy()
    if len(unsafe) == 0:
        return ranking
    rows = np.repeat(unsafe, width)
    cos = pair_cosine64(x, rows, cand[unsafe].reshape(-1)).reshape(len(unsafe), width)
    order = np.lexsort((cand[unsafe], -cos), axis=1)[:, :k]
    ranking[unsafe] = np.take_along_axis(cand[unsafe], order, 1)
    if width < n:
        # The near-tie zone of the k-th neighbour reaches the last candidate: every sample whose
        # float32 similarity is within the tolerance of the k-th one is a candidate.
        spill = unsafe[(sims[unsafe, k - 1].astype(np.float64) - sims[unsafe, -1]) <= tol]
        for s in range(0, len(spill), 256):
            rows_s = spill[s : s + 256]
            full = x[rows_s] @ x.T  # [b, N] float32
            kth = -np.partition(-full, k - 1, axis=1)[:, k - 1]
            for r, i in enumerate(rows_s):
                cols = np.flatnonzero(full[r] >= kth[r] - tol)
                cos = pair_cosine64(x, np.full(len(cols), i), cols)
                ranking[i] = cols[np.lexsort((cols, -cos))[:k]]
    return ranking
