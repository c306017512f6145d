"""Exact cosine k-nearest-neighbour ranking: float32 matrix products, float64 only at near-ties.

The ranking of every row is defined as the order by (cosine similarity computed in float64
descending, neighbour index ascending): a stable sort of the dense float64 similarity matrix
(:func:`.dense_reference.dense_ranking`). It is obtained without that matrix:

1. Float32 search, in row chunks: ``S = X[rows] @ X^T`` (``[b, N]``, torch ``mm`` on CPU or
   CUDA, TF32 off) and its ``k + margin`` largest entries (``topk``). Every float32 dot product
   of unit vectors is within ``e = float32_dot_error_bound(D)`` of the exact one, whatever the
   summation order, so with ``s_k`` the k-th largest float32 value of the row, every true
   top-k neighbour has float32 similarity ``>= s_k - 2e``. If the last candidate is still above
   that threshold (long runs of near-equal values, duplicates), the row's candidates are all
   the columns above it, read from ``S`` while it is in memory.
2. Float64 only where float32 cannot decide: the sorted float32 candidates are split into runs
   whose consecutive gaps are ``<= 2e`` (near-tie groups). Two candidates in different runs
   are ordered correctly by float32 (their exact similarities differ by more than 0); within a
   run of two or more members that reaches the first k positions, float64 cosines
   (:func:`pair_cosine64`) and the index decide. Rows whose candidate set was widened in step 1
   are sorted entirely by float64.

The result is therefore independent of the backend, the chunking and float32 rounding. The
same per-row routine serves a slice of query rows (:func:`exact_knn_rows`), which is how the
search is split across DDP ranks (:mod:`.distributed`).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

__all__ = [
    "l2_normalize",
    "knn_candidates",
    "pair_cosine64",
    "float32_dot_error_bound",
    "exact_knn",
    "exact_knn_rows",
    "EXACT_BACKENDS",
]

#: Float32 candidate searches of the exact path ("auto" = "torch").
EXACT_BACKENDS = ("auto", "faiss", "torch")


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
    if backend not in EXACT_BACKENDS:
        raise ValueError(f"knn backend must be one of {EXACT_BACKENDS}, got {backend!r}")
    return "torch" if backend == "auto" else backend


def pair_cosine64(
    x: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """Float64 inner products ``x[rows[e]] . x[cols[e]]`` for every pair ``e`` (``[E]``).

    Products of float32 numbers are exact in float64, so only the final sum rounds (einsum casts
    while it sums: the same float64 values as summing float64 copies, without the copies). Chunks
    stay small: large temporary arrays are slow to allocate on some virtual machines.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), chunk):
        a, b = x[rows[s : s + chunk]], x[cols[s : s + chunk]]
        out[s : s + chunk] = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return out


def float32_dot_error_bound(dim: int) -> float:
    """Bound on ``|float32 dot - exact dot|`` for unit vectors of ``dim`` entries (``dim * u``
    with ``u = 2^-24``, plus 1 %), valid for any summation order."""
    return 1.01 * dim * 2.0**-24


def _chunk_rows(n: int, device: torch.device) -> int:
    """Query rows per float32 product: about 256 MB of ``[b, N]`` similarities on CPU, 1 GB on
    CUDA."""
    budget = 2**30 if device.type == "cuda" else 2**28
    return int(max(16, min(4096, budget // (4 * max(n, 1)))))


def _torch_search(
    x: np.ndarray, start: int, stop: int, k: int, width: int, tol: float
) -> Tuple[np.ndarray, np.ndarray, Dict[int, np.ndarray]]:
    """Float32 candidates of query rows ``start:stop`` against all rows of ``x`` ``[N, D]``.

    Returns ``(sims [b, width] float32 sorted decreasing, cand [b, width] int64, wide)`` where
    ``wide`` maps a local row to all its columns with similarity ``>= s_k - tol`` when those do
    not fit in ``width`` (only possible when ``width < N``; never filled when ``tol < 0``).
    """
    n = x.shape[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    xt = torch.from_numpy(x).to(device)
    step = _chunk_rows(n, device)
    sims = np.empty((stop - start, width), dtype=np.float32)
    cand = np.empty((stop - start, width), dtype=np.int64)
    wide: Dict[int, np.ndarray] = {}
    buffer = torch.empty((min(step, stop - start), n), dtype=torch.float32, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for s in range(start, stop, step):
            e = min(s + step, stop)
            block = torch.mm(xt[s:e], xt.t(), out=buffer[: e - s])  # [b, N] float32
            top = block.topk(width, dim=1)
            vals = top.values.cpu().numpy()
            sims[s - start : e - start] = vals
            cand[s - start : e - start] = top.indices.cpu().numpy()
            if tol >= 0 and width < n:
                thr = vals[:, k - 1].astype(np.float64) - tol
                for r in np.flatnonzero(vals[:, -1] >= thr):
                    row = block[r].double().cpu().numpy()
                    wide[s - start + int(r)] = np.flatnonzero(row >= thr[r])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return sims, cand, wide


def knn_candidates(
    x: np.ndarray, k: int, backend: str = "auto", chunk_size: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest float32 inner products of each row (self included), sorted decreasing:
    ``(sims [N, k] float32, indices [N, k] int64)``.

    ``backend``: "faiss" (exact ``IndexFlatIP`` on CPU, ``knn_gpu`` when faiss sees a GPU) or
    "torch"/"auto" (chunked ``mm`` + ``topk``, on CUDA when available; ``chunk_size`` is unused
    and kept for compatibility).
    """
    n = x.shape[0]
    k = min(k, n)
    if _resolve_backend(backend) == "faiss":
        import faiss

        if faiss.get_num_gpus() > 0:
            res = faiss.StandardGpuResources()
            sims, idx = faiss.knn_gpu(res, x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            sims, idx = index.search(x, k)
        return np.asarray(sims, dtype=np.float32), np.ascontiguousarray(idx, dtype=np.int64)
    sims, idx, _ = _torch_search(x, 0, n, k, k, -1.0)
    return sims, idx


def _faiss_search(
    x: np.ndarray, start: int, stop: int, k: int, width: int, tol: float
) -> Tuple[np.ndarray, np.ndarray, Dict[int, np.ndarray]]:
    """As :func:`_torch_search`, with faiss flat candidates (widened rows recomputed)."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, cand = index.search(np.ascontiguousarray(x[start:stop]), width)
    sims, cand = np.asarray(sims, dtype=np.float32), np.ascontiguousarray(cand, dtype=np.int64)
    wide: Dict[int, np.ndarray] = {}
    if width < x.shape[0]:
        thr = sims[:, k - 1].astype(np.float64) - tol
        for r in np.flatnonzero(sims[:, -1] >= thr):
            row = (x @ x[start + r]).astype(np.float64)
            wide[int(r)] = np.flatnonzero(row >= thr[r])
    return sims, cand, wide


def _order_candidates(
    x: np.ndarray, query: np.ndarray, sims: np.ndarray, cand: np.ndarray, k: int, tol: float
) -> np.ndarray:
    """First ``k`` of each row's float32-sorted candidates in the exact order (see module
    docstring, step 2). ``query`` ``[b]`` are the rows' global indices; ``sims``/``cand``
    ``[b, W]``. Returns ``[b, k]`` int64."""
    s64 = sims.astype(np.float64)
    near = (s64[:, :-1] - s64[:, 1:]) <= tol  # [b, W - 1]: consecutive near-ties
    group = np.zeros(sims.shape, dtype=np.int64)
    np.cumsum(~near, axis=1, out=group[:, 1:])
    tied = np.zeros(sims.shape, dtype=bool)
    tied[:, :-1] |= near
    tied[:, 1:] |= near
    tied &= group <= group[:, k - 1 : k]  # only runs reaching the first k positions
    rows = np.flatnonzero(tied.any(1))
    out = cand[:, :k].copy()
    if len(rows) == 0:
        return out
    r, c = np.nonzero(tied[rows])
    cos = np.zeros((len(rows), sims.shape[1]), dtype=np.float64)
    cos[r, c] = pair_cosine64(x, query[rows][r], cand[rows][r, c])
    order = np.lexsort((cand[rows], -cos, group[rows]), axis=1)[:, :k]
    out[rows] = np.take_along_axis(cand[rows], order, 1)
    return out


def exact_knn_rows(
    x: np.ndarray, k: int, start: int, stop: int, backend: str = "auto", margin: int = 8
) -> np.ndarray:
    """Exact ranking ``[stop - start, k]`` of query rows ``start:stop`` of the L2-normalised
    ``x`` ``[N, D]`` against all rows (``k <= N``; see the module docstring)."""
    n, dim = x.shape
    width = min(k + max(margin, 0), n)
    tol = 2.0 * float32_dot_error_bound(dim)
    search = _faiss_search if _resolve_backend(backend) == "faiss" else _torch_search
    sims, cand, wide = search(x, start, stop, k, width, tol)
    ranking = _order_candidates(x, np.arange(start, stop), sims, cand, k, tol)
    for r, cols in wide.items():
        cos = pair_cosine64(x, np.full(len(cols), start + r), cols)
        ranking[r] = cols[np.lexsort((cols, -cos))[:k]]
    return ranking


def exact_knn(
    features: torch.Tensor | np.ndarray,
    k: int,
    backend: str = "auto",
    margin: int = 8,
) -> np.ndarray:
    """The first ``k`` neighbours of every row by float64 cosine, ties broken by lower index.

    Args:
        features: ``[N, D]`` features (L2-normalised here).
        k: neighbours per row, the row itself included (clipped to N).
        backend: float32 candidate search: "torch"/"auto" (chunked ``mm`` + ``topk``, CUDA when
            available) or "faiss" (``IndexFlatIP``).
        margin: extra float32 candidates per row beyond ``k`` (rows whose near-tie zone runs
            past them are widened, so the result does not depend on it).
    Returns:
        ranking ``[N, k]`` int64.
    """
    x = l2_normalize(features)
    return exact_knn_rows(x, min(k, x.shape[0]), 0, x.shape[0], backend, margin)
