"""Outlier Pseudo Label Mining (CPCL's OPLM; text-reid.md §2.3 step 4), vectorised.

An outlier of one modality whose paired sample is clustered in the other modality takes the
label of its most similar clustered sample among the pairs of that other-modality cluster.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .knn import l2_normalize, pair_cosine64

__all__ = ["OPLM_MODES", "mine_outliers", "outlier_pseudo_label_mining"]

#: "off": no mining; "one_stage": both directions from the labels before mining;
#: "two_stage": images first, then texts guided by the mined image labels.
OPLM_MODES = ("off", "one_stage", "two_stage")


def mine_outliers(
    target: np.ndarray,
    guide: np.ndarray,
    features,
    groups: Optional[np.ndarray] = None,
    min_similarity: Optional[float] = None,
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
    Returns:
        New ``[N]`` labels: for every outlier ``n`` with ``guide[n] != -1`` the candidates are
        ``S = {m : guide[m] == guide[n], target[m] != -1}``; if ``S`` is non-empty ``n`` takes
        ``target[argmax_{m in S} cos(f_n, f_m)]`` (ties: lowest ``m``). Others are unchanged.
    """
    target = np.asarray(target, dtype=np.int64)
    guide = np.asarray(guide, dtype=np.int64)
    n = len(target)
    if guide.shape != (n,):
        raise ValueError(f"target and guide must both be [N], got {target.shape}, {guide.shape}")
    groups = np.arange(n) if groups is None else np.asarray(groups, dtype=np.int64)
    if groups.shape != (n,) or (n and groups.min() < 0):
        raise ValueError("groups must be [N] non-negative integers")
    out = target.copy()
    outliers = np.flatnonzero((target < 0) & (guide >= 0))
    members = np.flatnonzero((target >= 0) & (guide >= 0))
    if len(outliers) == 0 or len(members) == 0:
        return out
    members = members[np.argsort(guide[members], kind="stable")]
    member_guide = guide[members]
    lo = np.searchsorted(member_guide, guide[outliers], "left")
    length = np.searchsorted(member_guide, guide[outliers], "right") - lo
    total = int(length.sum())
    if total == 0:
        return out
    offset = np.cumsum(length) - length
    pair_o = np.repeat(outliers, length)
    pair_m = members[np.repeat(lo - offset, length) + np.arange(total)]
    sims = pair_cosine64(l2_normalize(features), pair_o, pair_m)
    unit = groups[pair_o]
    order = np.lexsort((pair_m, -sims, unit))
    unit_sorted = unit[order]
    best = order[np.r_[True, unit_sorted[1:] != unit_sorted[:-1]]]
    if min_similarity is not None:
        best = best[sims[best] >= min_similarity]
    label_of_unit = np.full(int(groups.max()) + 1, -1, dtype=np.int64)
    label_of_unit[unit[best]] = target[pair_m[best]]
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
