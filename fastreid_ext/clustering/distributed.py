"""The exact kNN split across DDP ranks: each rank ranks its slice of query rows against all
features, and the slices are gathered; the ranking (hence the pseudo labels) is identical to the
single-process :func:`.knn.exact_knn`, because every row's ranking depends only on that row and
the features (see :mod:`.knn`).

Scaling: the float32 products and top-k are ``O(N^2 D / W)`` per rank for ``W`` ranks; the
gather moves ``N * k`` int64 (16 MB at N = 68k, k = 30) once. Every rank needs all ``N x D``
features (they are gathered for clustering anyway); the Jaccard and DBSCAN stages stay on one
rank (they are linear in N and a small part of the total).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .knn import exact_knn_rows, l2_normalize

__all__ = ["row_slices", "distributed_exact_knn"]


def row_slices(n: int, world: int) -> List[Tuple[int, int]]:
    """``world`` contiguous ``(start, stop)`` query slices of ``n`` rows, sizes differing by at
    most one."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return [(int(bounds[r]), int(bounds[r + 1])) for r in range(world)]


def distributed_exact_knn(
    features: torch.Tensor | np.ndarray, k: int, backend: str = "auto", margin: int = 8
) -> np.ndarray:
    """Exact ranking ``[N, k]`` int64 of ``features`` ``[N, D]`` (the same on every rank), each
    rank searching its :func:`row_slices` slice. Must be called on every rank with the same
    features; without an initialised process group it is :func:`.knn.exact_knn`."""
    x = l2_normalize(features)
    n = x.shape[0]
    k = min(k, n)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return exact_knn_rows(x, k, 0, n, backend, margin)
    start, stop = row_slices(n, world)[dist.get_rank()]
    part = exact_knn_rows(x, k, start, stop, backend, margin)
    parts: List[np.ndarray] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(parts, part)
    return np.concatenate(parts)
