"""DBSCAN on the sparse radius graph (blobs, equality with the dense matrix) and OPLM on hand-made
label configurations (one-stage, two-stage, image groups, threshold)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from fastreid_ext.clustering import (
    cluster_pseudo_labels,
    dbscan_labels,
    jaccard_distance_dense,
    k_reciprocal_jaccard,
    label_counts,
    mine_outliers,
    outlier_pseudo_label_mining,
)


def _blobs(num: int, size: int, dim: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = np.repeat(np.arange(num), size)
    x = centers[truth] + noise * rng.standard_normal((num * size, dim)) / np.sqrt(dim)
    return x.astype(np.float32), truth


def test_well_separated_blobs_are_recovered():
    x, truth = _blobs(num=6, size=20, dim=32, noise=0.3, seed=0)
    perm = np.random.default_rng(1).permutation(len(x))
    labels = cluster_pseudo_labels(x[perm], k1=30, k2=6, eps=0.6, min_samples=4)
    assert adjusted_rand_score(truth[perm], labels) == 1.0
    assert label_counts(labels) == (6, 0)


def test_sparse_and_dense_dbscan_give_identical_labels():
    x, _ = _blobs(num=40, size=8, dim=24, noise=1.6, seed=2)  # overlapping blobs: border cases
    dense = dbscan_labels(jaccard_distance_dense(x, 30, 6), 0.6, 4)
    sparse = cluster_pseudo_labels(x, 30, 6, 0.6, 4)
    assert np.array_equal(dense, sparse)
    clusters, outliers = label_counts(sparse)
    assert clusters > 5 and outliers > 0


def test_every_clustering_parameter_reaches_its_stage():
    """cluster_pseudo_labels(k1, k2, eps, min_samples) equals DBSCAN(eps, min_samples) on the
    full Jaccard graph (every pair below 1) of the same k1, k2, for values other than the
    defaults, and each parameter changes the labels of these overlapping blobs."""
    x, _ = _blobs(num=25, size=8, dim=24, noise=1.6, seed=2)
    runs = {}
    for k1, k2, eps, min_samples in [
        (30, 6, 0.6, 4),
        (30, 6, 0.6, 8),
        (30, 6, 0.6, 2),
        (30, 3, 0.6, 4),
        (20, 6, 0.6, 4),
        (30, 6, 0.5, 4),
    ]:
        full = dbscan_labels(k_reciprocal_jaccard(x, k1, k2, max_distance=1.0), eps, min_samples)
        sparse = cluster_pseudo_labels(x, k1, k2, eps, min_samples)
        assert np.array_equal(full, sparse), (k1, k2, eps, min_samples)
        runs[k1, k2, eps, min_samples] = tuple(sparse)
    assert len(set(runs.values())) == len(runs)


def test_dbscan_rejects_non_square_input():
    with pytest.raises(ValueError, match="square"):
        dbscan_labels(np.zeros((3, 4)))


def _unit(*angles_deg: float) -> np.ndarray:
    """2-D unit vectors at the given angles (cosine = cos of the angle difference)."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def _oplm_case():
    """Eleven pairs; image clusters A=0, X=2, B=1; text clusters T0=0, T1=1, T2=2, T3=3."""
    yv = np.array([-1, 0, 1, 0, 0, -1, -1, -1, 2, 2, 2])
    yt = np.array([0, 0, 0, -1, 1, -1, 3, -1, 2, -1, 3])
    # image features: pair 0 is closest to pair 2 (label B=1) among its text cluster T0 {1, 2}
    fv = _unit(0, 80, 10, 0, 0, 0, 0, 0, 0, 0, 0)
    # text features: pair 3 (image A) is closest to pair 4 (T1) among A's texts {1 (T0), 4 (T1)};
    # pair 9 (image X) is closest to pair 6, then pair 8, then pair 10
    ft = _unit(90, 90, 90, 0, 5, 0, 200, 0, 190, 200, 100)
    return yv, yt, fv, ft


def test_oplm_one_stage_assignments():
    yv, yt, fv, ft = _oplm_case()
    new_v, new_t = outlier_pseudo_label_mining(yv, yt, fv, ft, "one_stage")
    # image outliers with a clustered caption take the nearest image label of that text cluster
    assert new_v[0] == 1  # T0 members with images: pairs 1 (A, 80 deg) and 2 (B, 10 deg)
    assert new_v[6] == 2  # T3 members with images: pair 10 (X)
    # pairs that are outliers in both modalities stay outliers
    assert new_v[5] == -1 and new_t[5] == -1 and new_v[7] == -1 and new_t[7] == -1
    # text outliers whose image is clustered
    assert new_t[3] == 1  # image A: texts of pairs 1 (T0, 90 deg) and 4 (T1, 5 deg)
    # image X before mining = pairs 8 (T2, 190 deg) and 10 (T3, 100 deg): 8 is nearer to 200 deg
    assert new_t[9] == 2
    # clustered labels never change
    assert np.array_equal(new_v[yv >= 0], yv[yv >= 0])
    assert np.array_equal(new_t[yt >= 0], yt[yt >= 0])


def test_oplm_two_stage_uses_mined_image_labels_for_texts():
    yv, yt, fv, ft = _oplm_case()
    new_v, new_t = outlier_pseudo_label_mining(yv, yt, fv, ft, "two_stage")
    assert new_v[6] == 2 and new_v[0] == 1
    # pair 6 joined image X in stage one; its text (T3, 200 deg) is the nearest for pair 9
    assert new_t[9] == 3
    assert new_t[3] == 1


def test_oplm_off_returns_labels_unchanged():
    yv, yt, fv, ft = _oplm_case()
    new_v, new_t = outlier_pseudo_label_mining(yv, yt, fv, ft, "off")
    assert np.array_equal(new_v, yv) and np.array_equal(new_t, yt)
    with pytest.raises(ValueError, match="OPLM mode"):
        outlier_pseudo_label_mining(yv, yt, fv, ft, "three_stage")


def test_oplm_image_groups_assign_one_label_per_image():
    # pairs 0 and 1 share an outlier image; its captions are in text clusters 0 and 1
    target = np.array([-1, -1, 5, 7])
    guide = np.array([0, 1, 0, 1])
    feats = _unit(0, 0, 40, 10)  # the image is nearer to pair 3 (label 7) than to pair 2 (5)
    per_pair = mine_outliers(target, guide, feats)
    assert per_pair.tolist() == [5, 7, 5, 7]
    grouped = mine_outliers(target, guide, feats, groups=np.array([0, 0, 1, 2]))
    assert grouped.tolist() == [7, 7, 5, 7]


def test_oplm_similarity_threshold_and_ties():
    target = np.array([-1, 3, 4])
    guide = np.array([0, 0, 0])
    feats = _unit(0, 60, 60)  # equal similarity: the lower index wins
    assert mine_outliers(target, guide, feats).tolist() == [3, 3, 4]
    assert mine_outliers(target, guide, feats, min_similarity=0.6).tolist() == [-1, 3, 4]
    assert mine_outliers(target, guide, feats, min_similarity=0.4).tolist() == [3, 3, 4]


def _brute_force_mining(target, guide, feats, groups, min_similarity=None):
    """The OPLM definition with Python loops and float64 cosines (ties: lowest m)."""
    x = feats.astype(np.float64) / np.linalg.norm(feats.astype(np.float64), axis=1)[:, None]
    best = {}  # unit -> (cosine, m)
    for o in range(len(target)):
        if target[o] >= 0 or guide[o] < 0:
            continue
        for m in range(len(target)):
            if m != o and guide[m] == guide[o] and target[m] >= 0:
                key = (-float(x[o] @ x[m]), m)
                if groups[o] not in best or key < best[groups[o]]:
                    best[groups[o]] = key
    out = target.copy()
    for o in np.flatnonzero(target < 0):
        hit = best.get(groups[o])
        if hit is not None and (min_similarity is None or -hit[0] >= min_similarity):
            out[o] = target[hit[1]]
    return out


@pytest.mark.parametrize("mode", ["one_stage", "two_stage"])
def test_oplm_hands_groups_and_threshold_to_both_directions(mode):
    """outlier_pseudo_label_mining equals the definition applied per direction with the image
    groups (image direction) and the minimum similarity (both directions); on these pairs the
    groups and the threshold each change the result of the direction they act on."""
    rng = np.random.default_rng(11)
    n = 80
    groups = np.arange(n) // 2  # two captions per image: image labels and features per image
    yv = rng.integers(-1, 4, n // 2)[groups]
    fv = rng.standard_normal((n // 2, 6)).astype(np.float32)[groups]
    yt = rng.integers(-1, 4, n)
    ft = rng.standard_normal((n, 6)).astype(np.float32)

    def expected(min_sim, image_groups):
        v = _brute_force_mining(yv, yt, fv, image_groups, min_sim)
        t = _brute_force_mining(yt, v if mode == "two_stage" else yv, ft, np.arange(n), min_sim)
        return v, t

    got = outlier_pseudo_label_mining(yv, yt, fv, ft, mode, groups, min_similarity=0.3)
    want = expected(0.3, groups)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    no_threshold = expected(None, groups)
    per_pair = expected(0.3, np.arange(n))
    assert not np.array_equal(want[0], no_threshold[0])
    assert not np.array_equal(want[1], no_threshold[1])
    assert not np.array_equal(want[0], per_pair[0])


def test_oplm_chunked_and_blocked_scoring_equal_unchunked_and_brute_force():
    rng = np.random.default_rng(3)
    n = 400
    feats = rng.standard_normal((n, 16)).astype(np.float32)
    feats[rng.integers(0, n, 40)] = feats[rng.integers(0, n, 40)]  # exact ties
    groups = np.arange(n) // 2  # two captions per image
    # a giant guide cluster (label 0, half the pairs) and many small ones
    guide = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 30, n))
    guide[rng.random(n) < 0.1] = -1
    target = rng.integers(0, 12, n)
    target[rng.random(n) < 0.4] = -1
    target[groups == 7] = -1  # an outlier image whose two captions are in different clusters
    guide[14], guide[15] = 0, 3
    expected = _brute_force_mining(target, guide, feats, groups)
    assert (expected != target).sum() > 50  # many outliers are assigned
    # unchunked: one chunk of every pair, no blocked scoring (the straightforward algorithm)
    unchunked = mine_outliers(target, guide, feats, groups, max_pairs=10**9, block_min_members=n)
    assert np.array_equal(unchunked, expected)
    for max_pairs, block_min in ((7, n), (1, n), (7, 5), (1, 1), (500, 50)):
        got = mine_outliers(target, guide, feats, groups, None, max_pairs, block_min)
        assert np.array_equal(got, expected), (max_pairs, block_min)
    for thr in (0.0, 0.3):
        ref = _brute_force_mining(target, guide, feats, groups, thr)
        assert np.array_equal(mine_outliers(target, guide, feats, groups, thr, 3, 4), ref)
