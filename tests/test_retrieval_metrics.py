"""Tests of the exact text-to-image retrieval metrics (R@K, mAP, mINP) vs hand values, argsort."""

from __future__ import annotations

import logging

import pytest
import torch

from fastreid_ext.evaluation.retrieval_metrics import _ordered_int32_keys, retrieval_metrics


def reference_retrieval_metrics(qf, gf, qp, gp, topk=(1, 5, 10), normalize=True):
    """The IRRA definitions, naively: float64 similarities and a stable full argsort per query.

    Returns the metrics dict (percent) and the [Nq, Ng] ranking (ties by gallery index).
    """
    q, g = qf.double(), gf.double()
    if normalize:
        q, g = q / q.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
    sims = q @ g.t()
    order = torch.sort(-sims, dim=1, stable=True).indices  # ascending stable: ties keep index order
    matches = (gp[order] == qp[:, None]).double()
    num_pos = matches.sum(1)
    assert (num_pos > 0).all()
    ranks = torch.arange(1, sims.shape[1] + 1, dtype=torch.float64)
    cmc = matches.cumsum(1).clamp(max=1)
    result = {f"R{k}": 100 * cmc[:, min(k, sims.shape[1]) - 1].mean().item() for k in topk}
    ap = (matches.cumsum(1) / ranks * matches).sum(1) / num_pos
    last = (matches * ranks).max(1).values
    result["mAP"] = 100 * ap.mean().item()
    result["mINP"] = 100 * (num_pos / last).mean().item()
    return result, order


def assert_metrics_equal(got, want):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=0, abs=1e-9), key


def dyadic_case(seed, num_q, num_g, num_ids, dim=16, levels=4):
    """Features in multiples of 1/4 in [-1, 1]: every float32 dot product is exact (ties common)."""
    gen = torch.Generator().manual_seed(seed)
    gp = torch.randint(0, num_ids, (num_g,), generator=gen) * 7 - 3  # non-contiguous, negative pids
    qp = gp[torch.randint(0, num_g, (num_q,), generator=gen)]
    qf = torch.randint(-levels, levels + 1, (num_q, dim), generator=gen).float() / levels
    gf = torch.randint(-levels, levels + 1, (num_g, dim), generator=gen).float() / levels
    return qf, gf, qp, gp


# 3 queries x 6 gallery items. The gallery is the identity basis, so similarity(q, g_i) = q[i].
HAND_GALLERY_PIDS = torch.tensor([0, 0, 1, 1, 2, 2])
HAND_QUERY_PIDS = torch.tensor([0, 1, 2])
HAND_QUERY_FEATS = torch.tensor(
    [
        # pid 0, positives g0, g1. Ranking g0 .9, g2 .7, g1 .5, g4 .3, g5 .2, g3 .1 -> positives at
        # ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3.
        [0.9, 0.5, 0.7, 0.1, 0.3, 0.2],
        # pid 1, positives g2, g3 both at the end. Ranking g0, g1, g4, g5, g3 (.2), g2 (.1) -> ranks
        # 5 and 6: AP = (1/5 + 2/6) / 2 = 4/15, INP = 2/6.
        [0.6, 0.5, 0.1, 0.2, 0.4, 0.3],
        # pid 2, positives g4, g5, with ties: g0, g1, g3, g4 all .5 -> index order; g2, g5 .25.
        # Ranking g0, g1, g3, g4, g2, g5 -> ranks 4 and 6: AP = (1/4 + 2/6) / 2 = 7/24, INP = 2/6.
        [0.5, 0.5, 0.25, 0.5, 0.5, 0.25],
    ]
)


def test_hand_computed_case():
    out = retrieval_metrics(
        HAND_QUERY_FEATS,
        torch.eye(6),
        HAND_QUERY_PIDS,
        HAND_GALLERY_PIDS,
        topk=(1, 4, 5),
        normalize=False,
        chunk_size=2,
        return_topk_indices=6,
    )
    # first positive at ranks 1, 5, 4
    assert out["R1"] == pytest.approx(100 / 3)
    assert out["R4"] == pytest.approx(200 / 3)
    assert out["R5"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(100 * (5 / 6 + 4 / 15 + 7 / 24) / 3)  # 167/360
    assert out["mINP"] == pytest.approx(100 * (2 / 3 + 1 / 3 + 1 / 3) / 3)  # 4/9
    expected_order = torch.tensor([[0, 2, 1, 4, 5, 3], [0, 1, 4, 5, 3, 2], [0, 1, 3, 4, 2, 5]])
    assert torch.equal(out["topk_indices"], expected_order)
    assert set(out) == {"R1", "R4", "R5", "mAP", "mINP", "topk_indices"}
    assert all(isinstance(out[k], float) for k in ("R1", "R4", "R5", "mAP", "mINP"))


def test_single_positive_at_rank_one():
    gallery = torch.eye(4)
    queries = torch.tensor([[1.0, 0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = retrieval_metrics(queries, gallery, torch.tensor([7, 9]), torch.tensor([7, 8, 8, 9]))
    assert out == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0}


def test_positives_all_at_the_end():
    # 10 gallery items, similarity = 10 - index, so the ranking is the index order; the 4 positives
    # are the last 4 items: ranks 7..10.
    gallery = torch.eye(10)
    query = torch.arange(10, 0, -1).float()[None]
    gallery_pids = torch.tensor([1] * 6 + [5] * 4)
    out = retrieval_metrics(query, gallery, torch.tensor([5]), gallery_pids, normalize=False)
    assert out["R1"] == 0.0 and out["R5"] == 0.0 and out["R10"] == 100.0
    assert out["mAP"] == pytest.approx(100 * (1 / 7 + 2 / 8 + 3 / 9 + 4 / 10) / 4)
    assert out["mINP"] == pytest.approx(100 * 4 / 10)


def test_all_similarities_tied_rank_by_gallery_index():
    # Every similarity is equal: the ranking is the gallery order. Positives of pid 3 are at
    # indices 1 and 4 -> ranks 2 and 5; a positive with a smaller index than tied negatives wins.
    gallery = torch.ones(6, 2)
    query = torch.ones(1, 2)
    gallery_pids = torch.tensor([0, 3, 0, 0, 3, 0])
    out = retrieval_metrics(query, gallery, torch.tensor([3]), gallery_pids, topk=(1, 2))
    assert out["R1"] == 0.0 and out["R2"] == 100.0
    assert out["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 5) / 2)
    assert out["mINP"] == pytest.approx(100 * 2 / 5)


def test_negative_zero_ties_with_positive_zero():
    # With D = 1 the float32 product gives q . g0 = 1 * -0.0 = -0.0 and q . g1 = +0.0: equal
    # similarities, so g0 (smaller index) ranks before g1 whatever the sign of the zero.
    gallery = torch.tensor([[-0.0], [0.0], [-1.0]])
    queries = torch.tensor([[1.0], [1.0]])
    if not torch.signbit(queries @ gallery.t()).any(dim=1)[0]:
        pytest.skip("this BLAS never returns -0.0 here")
    out = retrieval_metrics(
        queries,
        gallery,
        torch.tensor([1, 0]),
        torch.tensor([0, 1, 0]),
        topk=(1, 2),
        normalize=False,
    )
    # query 0 (pid 1): positive g1 at rank 2; query 1 (pid 0): positives g0, g2 at ranks 1 and 3
    assert out["R1"] == 50.0 and out["R2"] == 100.0
    assert out["mAP"] == pytest.approx(100 * (1 / 2 + (1 + 2 / 3) / 2) / 2)
    assert out["mINP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_ordered_int32_keys_preserve_float_order():
    values = torch.tensor(
        [-float("inf"), -3.5, -1.0, -1e-30, -1e-45, 0.0, 1e-45, 1e-38, 0.25, 1.0, 7.0, float("inf")]
    )
    keys = _ordered_int32_keys(values.clone())
    assert (keys[1:] > keys[:-1]).all()
    assert keys[5] == 0  # +0.0


@pytest.mark.parametrize(
    "seed,num_q,num_g,num_ids,chunk",
    [
        (0, 37, 50, 5, 8),
        (1, 64, 23, 3, 5),
        (2, 20, 200, 4, 7),
        (3, 50, 120, 40, 16),
        (4, 9, 31, 2, 1),
    ],
)
def test_random_cases_match_naive_argsort(seed, num_q, num_g, num_ids, chunk):
    qf, gf, qp, gp = dyadic_case(seed, num_q, num_g, num_ids, levels=2)  # coarse: many exact ties
    want, order = reference_retrieval_metrics(qf, gf, qp, gp, topk=(1, 3, 5, 10), normalize=False)
    got = retrieval_metrics(
        qf,
        gf,
        qp,
        gp,
        topk=(1, 3, 5, 10),
        normalize=False,
        chunk_size=chunk,
        return_topk_indices=10,
    )
    assert_metrics_equal(got, want)
    assert torch.equal(got["topk_indices"], order[:, :10])


def test_random_gaussian_features_with_normalisation():
    gen = torch.Generator().manual_seed(11)
    gp = torch.randint(0, 6, (90,), generator=gen)
    qp = gp[torch.randint(0, 90, (40,), generator=gen)]
    qf, gf = torch.randn(40, 24, generator=gen) * 3, torch.randn(90, 24, generator=gen)
    want, order = reference_retrieval_metrics(qf, gf, qp, gp)
    got = retrieval_metrics(qf, gf, qp, gp, chunk_size=16, return_topk_indices=20)
    assert_metrics_equal(got, want)
    assert torch.equal(got["topk_indices"], order[:, :20])


def test_normalisation_is_scale_invariant():
    # Vectors with four entries of +-1 have norm 2, so normalising is exact: x / 2.
    gen = torch.Generator().manual_seed(5)
    signs = lambda n: torch.randint(0, 2, (n, 4), generator=gen).float() * 2 - 1  # noqa: E731
    qf = torch.cat([signs(30), torch.zeros(30, 4)], 1)
    gf = torch.cat([torch.zeros(25, 2), signs(25), torch.zeros(25, 2)], 1)
    gp = torch.arange(25) % 4
    qp = gp[torch.randint(0, 25, (30,), generator=gen)]
    scaled = retrieval_metrics(qf * 4, gf * 0.5, qp, gp, chunk_size=7, return_topk_indices=25)
    unit = retrieval_metrics(qf / 2, gf / 2, qp, gp, normalize=False, return_topk_indices=25)
    want, order = reference_retrieval_metrics(qf / 2, gf / 2, qp, gp, normalize=False)
    assert_metrics_equal(scaled, want)
    assert_metrics_equal(unit, want)
    assert torch.equal(scaled["topk_indices"], order) and torch.equal(unit["topk_indices"], order)


def test_many_positives_per_query_and_threaded_sort():
    # 2 identities over 2,600 items (~1,300 positives per query); 100 x 2,600 is big enough for the
    # multi-threaded row sort.
    qf, gf, qp, gp = dyadic_case(21, 100, 2600, 2, dim=8)
    want, order = reference_retrieval_metrics(qf, gf, qp, gp, normalize=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = retrieval_metrics(
            qf, gf, qp, gp, normalize=False, chunk_size=96, return_topk_indices=5
        )
    finally:
        torch.set_num_threads(threads)
    assert_metrics_equal(got, want)
    assert torch.equal(got["topk_indices"], order[:, :5])


def test_low_precision_inputs_are_computed_in_float32():
    qf, gf, qp, gp = dyadic_case(8, 30, 40, 5)
    want, _ = reference_retrieval_metrics(qf, gf, qp, gp, normalize=False)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        got = retrieval_metrics(qf.to(dtype), gf.to(dtype), qp, gp, normalize=False)
        assert_metrics_equal(got, want)


def test_k_larger_than_gallery_means_whole_gallery():
    qf, gf, qp, gp = dyadic_case(3, 12, 6, 3)
    got = retrieval_metrics(qf, gf, qp, gp, normalize=False, return_topk_indices=10)
    want, order = reference_retrieval_metrics(qf, gf, qp, gp, topk=(1, 5, 6), normalize=False)
    assert got["R10"] == 100.0 and want["R6"] == 100.0
    assert got["R1"] == pytest.approx(want["R1"]) and got["R5"] == pytest.approx(want["R5"])
    assert torch.equal(got["topk_indices"], order)  # capped at Ng = 6 columns


def test_queries_without_positive_raise_or_are_skipped(caplog):
    qf, gf, qp, gp = dyadic_case(9, 15, 40, 4)
    qp = qp.clone()
    qp[[2, 11]] = 1000  # absent from the gallery
    with pytest.raises(ValueError, match="2 of 15 queries have no positive"):
        retrieval_metrics(qf, gf, qp, gp, normalize=False)
    with caplog.at_level(logging.WARNING):
        got = retrieval_metrics(
            qf, gf, qp, gp, normalize=False, chunk_size=4, return_topk_indices=40,
            skip_queries_without_positive=True,
        )  # fmt: skip
    assert "2 of 15 queries have no positive" in caplog.text
    keep = qp != 1000
    want, _ = reference_retrieval_metrics(qf[keep], gf, qp[keep], gp, normalize=False)
    assert_metrics_equal(got, want)
    full_order = torch.sort(-(qf.double() @ gf.double().t()), dim=1, stable=True).indices
    assert torch.equal(got["topk_indices"], full_order)


def test_progress_bar_over_chunks(capsys):
    qf, gf, qp, gp = dyadic_case(6, 10, 12, 3)
    quiet = retrieval_metrics(qf, gf, qp, gp, normalize=False, chunk_size=4)
    shown = retrieval_metrics(qf, gf, qp, gp, normalize=False, chunk_size=4, progress=True)
    assert shown == quiet
    assert "t2i retrieval" in capsys.readouterr().err


def test_invalid_inputs_name_the_argument():
    qf, gf, qp, gp = dyadic_case(0, 4, 6, 2)
    with pytest.raises(ValueError, match="feature dims differ"):
        retrieval_metrics(qf, gf[:, :3], qp, gp)
    with pytest.raises(ValueError, match="query_pids must be an integer"):
        retrieval_metrics(qf, gf, qp.float(), gp)
    with pytest.raises(ValueError, match=r"gallery_pids must have shape \[6\]"):
        retrieval_metrics(qf, gf, qp, gp[:5])
    with pytest.raises(ValueError, match="gallery_feats contains NaN"):
        retrieval_metrics(qf, gf.index_fill(0, torch.tensor([1]), float("nan")), qp, gp)
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(qf, gf, qp, gp, chunk_size=0)
    with pytest.raises(ValueError, match="topk"):
        retrieval_metrics(qf, gf, qp, gp, topk=(0, 5))
    with pytest.raises(ValueError, match="query_feats must be a non-empty"):
        retrieval_metrics(qf[:0], gf, qp[:0], gp)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    qf, gf, qp, gp = dyadic_case(4, 300, 500, 20)
    cpu = retrieval_metrics(qf, gf, qp, gp, normalize=False, chunk_size=64, return_topk_indices=10)
    gpu = retrieval_metrics(
        qf.cuda(), gf.cuda(), qp.cuda(), gp.cuda(), normalize=False, chunk_size=64,
        return_topk_indices=10,
    )  # fmt: skip
    assert_metrics_equal(gpu, {k: v for k, v in cpu.items() if k != "topk_indices"})
    assert torch.equal(gpu["topk_indices"].cpu(), cpu["topk_indices"])
