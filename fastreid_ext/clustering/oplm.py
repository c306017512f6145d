"""Outlier Pseudo Label Mining (OPLM of CPCL, Zhao et al., arXiv 2401.10011), vectorised.

CPCL's code is not public; the rule below and its variants (``OPLM_MODES``) are the reading
documented, with the choices it makes, in projects/CPCL/README.md.

An outlier of one modality whose paired sample is clustered in the other modality takes the
label of its most similar clustered sample among the pairs of that other-modality cluster.

Memory is bounded whatever the cluster sizes (a giant DBSCAN cluster can pair thousands of
outliers with tens of thousands of candidates): small guide clusters enumerate their pairs in
chunks of at most :data:`MAX_PAIRS`; large ones use float32 block products of bounded size and
re-score the near-maximal candidates in float64, which gives the same argmax as scoring every
pair in float64 (cf. :func:`.knn.exact_knn`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .knn import float32_dot_error_bound, l2_normalize, pair_cosine64

__all__ = ["OPLM_MODES", "mine_outliers", "outlier_pseudo_label_mining"]

#: "off": no mining; "one_stage": both directions from the labels before mining;
#: "two_stage": images first, then texts guided by the mined image labels.
OPLM_MODES = ("off", "one_stage", "two_stage")

#: Default cap on the (outlier, candidate) similarities held at once: a few million pairs
#: (about 100 MB of index and score arrays), whatever the size of the guide clusters.
MAX_PAIRS = 2_000_000
#: Guide clusters with at least this many candidates are scored by blocked matrix products.
BLOCK_MIN_MEMBERS = 512


def _best_by_pairs(x, outliers, members, lo, length, max_pairs):
    """Per outlier, the best member by enumerating every (outlier, member) pair, in chunks of
    whole outliers holding at most ``max_pairs`` pairs (one outlier may exceed it alone).

    ``x``: ``[N, D]`` L2-normalised float32; ``outliers``, ``lo``, ``length``: ``[P]`` (the
    candidates of outlier p are ``members[lo[p] : lo[p] + length[p]]``, ascending indices).
    Returns ``(best_sim [P] float64, best_m [P] int64)``: highest cosine, ties to the lowest m.
    """
    best_sim = np.full(len(outliers), -np.inf)
    best_m = np.full(len(outliers), -1, dtype=np.int64)
    ends = np.cumsum(length)
    start = 0
    while start < len(outliers):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + max_pairs, "right")), start + 1)
        ln = length[start:stop]
        total = int(ln.sum())
        if total:
            owner = np.repeat(np.arange(start, stop), ln)
            pair_m = members[
                np.repeat(lo[start:stop] - (np.cumsum(ln) - ln), ln) + np.arange(total)
            ]
            sims = pair_cosine64(x, outliers[owner], pair_m)
            order = np.lexsort((pair_m, -sims, owner))
            first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
            best_sim[owner[first]] = sims[first]
            best_m[owner[first]] = pair_m[first]
        start = stop
    return best_sim, best_m


def _best_by_blocks(x, outliers, members, lo, length, max_pairs):
    """Per outlier, the best member of one large guide cluster (all ``outliers`` share it):
    float32 block products ``[b, |S|]`` (``b * |S| <= max_pairs``) propose every member within
    twice the float32 error bound of the row maximum, and those are re-scored in float64 with
    :func:`pair_cosine64`. The float64 maximiser and its ties are always proposed, so the result
    equals scoring every pair in float64. Arguments and result as :func:`_best_by_pairs`."""
    tol = 2.0 * float32_dot_error_bound(x.shape[1]) + 1e-12
    cand = members[lo[0] : lo[0] + length[0]]
    xc = x[cand]
    best_sim = np.empty(len(outliers))
    best_m = np.empty(len(outliers), dtype=np.int64)
    rows = max(1, max_pairs // len(cand))
    for s in range(0, len(outliers), rows):
        block = x[outliers[s : s + rows]] @ xc.T  # [b, |S|] float32
        r, c = np.nonzero(block >= block.max(axis=1, keepdims=True) - tol)
        pair_m = cand[c]
        sims = pair_cosine64(x, outliers[s + r], pair_m)
        order = np.lexsort((pair_m, -sims, r))
        first = order[np.r_[True, r[order][1:] != r[order][:-1]]]
        best_sim[s + r[first]] = sims[first]
        best_m[s + r[first]] = pair_m[first]
    return best_sim, best_m


def mine_outliers(
    target: np.ndarray,
    guide: np.ndarray,
    features,
    groups: Optional[np.ndarray] = None,
    min_similarity: Optional[float] = None,
    max_pairs: int = MAX_PAIRS,
    block_min_members: int = BLOCK_MIN_MEMBERS,
) -> np.ndarray:
    """One direction of OPLM.

    Args:
        target: ``[N]`` labels of the modality being mined (``-1`` = outlier).
        guide: ``[N]`` labels of the paired modality (same pair index).
        features: ``[N, D]`` features of the mined modality (cosine similarity).
        groups: ``[N]`` non-negative unit ids; samples of one unit (e.g. one image shared by
            several captions) are assigned together, using the best match over all their
            pairs. Default: every sample is its own unit.
        min_similarity: assign only when the best cosine reaches this value (None: always).
        max_pairs: memory cap: at most about this many (outlier, candidate) similarities exist
            at once (pairs of guide clusters with fewer than ``block_min_members`` candidates
            are scored in chunks of whole outliers; larger clusters by float32 blocks of at
            most ``max_pairs`` entries). The result does not depend on it.
        block_min_members: guide clusters with at least this many candidates use the blockwise
            float32 product + float64 re-scoring of :func:`_best_by_blocks`.
    Returns:
        New ``[N]`` labels: for every outlier ``n`` with ``guide[n] != -1`` the candidates are
        ``S = {m : guide[m] == guide[n], target[m] != -1}``; if ``S`` is non-empty ``n`` takes
        ``target[argmax_{m in S} cos(f_n, f_m)]`` (cosines in float64; ties: lowest ``m``).
        Others are unchanged.
    """
    target = np.asarray(target, dtype=np.int64)
    guide = np.asarray(guide, dtype=np.int64)
    n = len(target)
    if guide.shape != (n,):
        raise ValueError(f"target and guide must both be [N], got {target.shape}, {guide.shape}")
    groups = np.arange(n) if groups is None else np.asarray(groups, dtype=np.int64)
    if groups.shape != (n,) or (n and groups.min() < 0):
        raise ValueError("groups must be [N] non-negative integers")
    if max_pairs < 1 or block_min_members < 1:
        raise ValueError(
            f"max_pairs and block_min_members must be >= 1, got {max_pairs}, {block_min_members}"
        )
    out = target.copy()
    outliers = np.flatnonzero((target < 0) & (guide >= 0))
    members = np.flatnonzero((target >= 0) & (guide >= 0))
    if len(outliers) == 0 or len(members) == 0:
        return out
    members = members[np.argsort(guide[members], kind="stable")]  # by cluster, then index
    member_guide = guide[members]
    lo = np.searchsorted(member_guide, guide[outliers], "left")
    length = np.searchsorted(member_guide, guide[outliers], "right") - lo
    keep = length > 0
    outliers, lo, length = outliers[keep], lo[keep], length[keep]
    if len(outliers) == 0:
        return out
    x = l2_normalize(features)
    best_sim = np.empty(len(outliers))
    best_m = np.empty(len(outliers), dtype=np.int64)
    small = np.flatnonzero(length < block_min_members)
    best_sim[small], best_m[small] = _best_by_pairs(
        x, outliers[small], members, lo[small], length[small], max_pairs
    )
    large = np.flatnonzero(length >= block_min_members)
    large = large[np.argsort(lo[large], kind="stable")]  # one run per guide cluster
    for run in np.split(large, np.flatnonzero(np.diff(lo[large])) + 1) if len(large) else []:
        best_sim[run], best_m[run] = _best_by_blocks(
            x, outliers[run], members, lo[run], length[run], max_pairs
        )
    # per unit: the best over its outliers (highest cosine, then lowest m)
    unit = groups[outliers]
    order = np.lexsort((best_m, -best_sim, unit))
    best = order[np.r_[True, unit[order][1:] != unit[order][:-1]]]
    if min_similarity is not None:
        best = best[best_sim[best] >= min_similarity]
    label_of_unit = np.full(int(groups.max()) + 1, -1, dtype=np.int64)
    label_of_unit[unit[best]] = target[best_m[best]]
    still = target < 0
    out[still] = label_of_unit[groups[still]]
    return out


def outlier_pseudo_label_mining(
    image_labels: np.ndarray,
    text_labels: np.ndarray,
    image_features,
    text_features,
    mode: str = "one_stage",
    image_groups: Optional[np.ndarray] = None,
    min_similarity: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """OPLM over image-text pairs; returns mined ``(image_labels, text_labels)``, both ``[N]``.

    ``mode``: one of :data:`OPLM_MODES`. ``image_groups``: image id of each pair, so an image
    with several captions gets one label. Pairs that are outliers in both modalities stay -1.
    """
    if mode not in OPLM_MODES:
        raise ValueError(f"OPLM mode must be one of {OPLM_MODES}, got {mode!r}")
    image_labels = np.asarray(image_labels, dtype=np.int64)
    text_labels = np.asarray(text_labels, dtype=np.int64)
    if mode == "off":
        return image_labels.copy(), text_labels.copy()
    new_image = mine_outliers(
        image_labels, text_labels, image_features, image_groups, min_similarity
    )
    guide = new_image if mode == "two_stage" else image_labels
    new_text = mine_outliers(text_labels, guide, text_features, None, min_similarity)
    return new_image, new_text
