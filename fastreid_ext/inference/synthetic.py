"""Clustered synthetic ReID features for index benchmarks and tests (not uniform noise, so that
nearest neighbours exist and an approximate index's recall means something).

Generative model, all vectors in R^D with i.i.d. N(0, 1/D) entries before normalisation
(``normalize`` = divide by the L2 norm):

* ``num_groups = max(1, N // group_size)`` groups (coarse appearance: clothing colours, ...),
  centre ``g_j = normalize(e_j)``;
* identities: image counts ``1 + Poisson(images_per_id - 1)`` until N images are reached;
  identity ``i`` of a uniformly drawn group ``j`` has centre
  ``c_i = normalize(g_j + id_spread * e_i)``;
* an image of identity ``i`` is ``normalize(c_i + image_spread * e)``; a query is a fresh image
  of a uniformly drawn identity (a new photo of a person in the gallery).

With the defaults (``id_spread`` 1.0, ``image_spread`` 0.8, 5 images per identity, groups of
500 images) two images of one identity have cosine about 0.61, of one group about 0.30, and
otherwise about 0 +- 1/sqrt(D): a query's top 10 holds its identity's few images and then
near-tied images of its group -- the hard part for an approximate index.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["clustered_gallery"]

_CHUNK = 65_536


def _normalize(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered_gallery(
    n: int,
    dim: int = 512,
    num_queries: int = 1000,
    images_per_id: float = 5.0,
    group_size: int = 500,
    id_spread: float = 1.0,
    image_spread: float = 0.8,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(gallery [n, dim], gallery_ids [n], queries [num_queries, dim], query_ids
    [num_queries])``: float32 unit vectors and int64 identity labels (see the module doc)."""
    if n < 1 or dim < 1 or num_queries < 0 or images_per_id < 1:
        raise ValueError(
            f"need n >= 1, dim >= 1, num_queries >= 0, images_per_id >= 1; got {n}, {dim}, "
            f"{num_queries}, {images_per_id}"
        )
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(dim))
    counts = 1 + rng.poisson(images_per_id - 1, size=n)
    num_ids = int(np.searchsorted(np.cumsum(counts), n)) + 1
    counts = counts[:num_ids]
    counts[-1] -= int(counts.sum()) - n
    groups = _normalize(rng.standard_normal((max(1, n // group_size), dim), dtype=np.float32))
    id_group = rng.integers(0, groups.shape[0], size=num_ids)
    centres = np.empty((num_ids, dim), dtype=np.float32)
    for lo in range(0, num_ids, _CHUNK):
        hi = min(lo + _CHUNK, num_ids)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) * scale
        centres[lo:hi] = _normalize(groups[id_group[lo:hi]] + id_spread * noise)
    ids = np.repeat(np.arange(num_ids, dtype=np.int64), counts)
    gallery = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) * scale
        gallery[lo:hi] = _normalize(centres[ids[lo:hi]] + image_spread * noise)
    query_ids = rng.integers(0, num_ids, size=num_queries).astype(np.int64)
    noise = rng.standard_normal((num_queries, dim), dtype=np.float32) * scale
    queries = _normalize(centres[query_ids] + image_spread * noise)
    return gallery, ids, queries, query_ids
