"""SYSU-MM01 / RegDB protocol metrics: hand-computed layouts, exact ties, vectorised == loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastreid_ext.evaluation.vi_metrics import cross_modal_metrics, metrics_from_similarity
from fastreid_ext.evaluation.vi_reference import average_trials, reference_metrics_from_similarity

# Gallery ranked by score: g0 A cam2, g1 B cam1, g2 B cam4, g3 A cam4, g4 C cam5.
G_PIDS = [0, 1, 1, 0, 2]
G_CAMS = [2, 1, 4, 4, 5]
Q_PIDS = [0, 0, 2, 3]  # A@cam3, A@cam6, C@cam3, D@cam6 (D is absent from the gallery)
Q_CAMS = [3, 6, 3, 6]
SIM = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]] * 4)


def _both(sim, qp, gp, qc=None, gc=None, protocol="sysu", **kw):
    fast = metrics_from_similarity(sim, qp, gp, qc, gc, protocol=protocol, **kw)
    ref = reference_metrics_from_similarity(sim.numpy(), qp, gp, qc, gc, protocol=protocol)
    return fast, ref


def test_sysu_exclusion_and_deduplicated_cmc_by_hand():
    fast, ref = _both(SIM, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, "sysu")
    # q0 (cam 3): camera-2 items removed -> B, B, A, C; distinct B, A, C: rank 2; AP 1/3
    # q1 (cam 6): nothing removed -> A, B, B, A, C; distinct rank 1; AP (1 + 2/4) / 2; INP 2/4
    # q2 (cam 3): B, B, A, C; distinct rank 3; AP 1/4; q3 has no positive and is skipped
    for m in (fast, ref):
        assert m.num_valid == 3
        np.testing.assert_allclose(m.cmc, [1 / 3, 2 / 3, 1, 1, 1])
        assert m.mAP == pytest.approx((1 / 3 + 0.75 + 0.25) / 3)
        assert m.mINP == pytest.approx((1 / 3 + 0.5 + 0.25) / 3)


def test_regdb_protocol_removes_nothing_and_uses_standard_cmc():
    fast, ref = _both(SIM, Q_PIDS, G_PIDS, protocol="regdb")
    # q0, q1: A, B, B, A, C -> first hit at 1, AP 0.75, INP 0.5; q2: C at rank 5 (AP = INP = 1/5)
    for m in (fast, ref):
        np.testing.assert_allclose(m.cmc, [2 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
        assert m.mAP == pytest.approx((0.75 + 0.75 + 0.2) / 3)
        assert m.mINP == pytest.approx((0.5 + 0.5 + 0.2) / 3)


def test_plain_cmc_differs_from_deduplicated_cmc():
    # q0 of the SYSU layout has its first positive at kept rank 3, but identity rank 2
    sysu = metrics_from_similarity(SIM[:1], Q_PIDS[:1], G_PIDS, Q_CAMS[:1], G_CAMS)
    assert sysu.cmc[1] == 1.0
    cams6 = metrics_from_similarity(SIM[:1], Q_PIDS[:1], G_PIDS, [6], G_CAMS)
    assert cams6.cmc[0] == 1.0  # the same query seen from camera 6 keeps the camera-2 match


def test_ties_are_broken_by_gallery_index():
    sim = torch.zeros(1, 4)  # all equal: ranking is g0, g1, g2, g3
    fast, ref = _both(sim, [7], [1, 2, 7, 7], protocol="regdb")
    for m in (fast, ref):
        np.testing.assert_allclose(m.cmc, [0, 0, 1, 1])
        assert m.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)
    # deduplicated tie: identities 1 and 7 share the best score, 1 comes first by index
    sim = torch.tensor([[1.0, 0.5, 1.0, 0.0]])
    for m in _both(sim, [7], [1, 1, 7, 2], [6], [1, 1, 1, 1], "sysu"):
        np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])


@pytest.mark.parametrize("protocol", ["sysu", "regdb"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_per_query_loop_with_many_ties(protocol, seed):
    g = torch.Generator().manual_seed(seed)
    nq, ng = 60, 45
    sim = torch.randint(0, 6, (nq, ng), generator=g).float()  # integer scores: many exact ties
    qp = torch.randint(0, 12, (nq,), generator=g)
    gp = torch.randint(0, 10, (ng,), generator=g)  # ids 10, 11 missing from the gallery
    qc = torch.tensor([3, 6])[torch.randint(0, 2, (nq,), generator=g)]
    gc = torch.tensor([1, 2, 4, 5])[torch.randint(0, 4, (ng,), generator=g)]
    fast, ref = _both(sim, qp, gp, qc, gc, protocol, chunk_size=7)
    assert fast.num_valid == ref.num_valid
    np.testing.assert_array_equal(fast.cmc, ref.cmc)
    assert fast.mAP == pytest.approx(ref.mAP, rel=1e-12)
    assert fast.mINP == pytest.approx(ref.mINP, rel=1e-12)


def test_features_entry_point_and_trial_average():
    g = torch.Generator().manual_seed(3)
    q, gal = torch.randn(20, 8, generator=g), torch.randn(15, 8, generator=g)
    qp, gp = torch.arange(20) % 5, torch.arange(15) % 5
    qc, gc = torch.full((20,), 3), torch.tensor([1, 2, 4] * 5)
    a = cross_modal_metrics(q, gal, qp, gp, qc, gc, protocol="sysu", max_rank=4)
    b = metrics_from_similarity(q @ gal.t(), qp, gp, qc, gc, protocol="sysu", max_rank=4)
    assert len(a.cmc) == 4 and np.array_equal(a.cmc, b.cmc) and a.mAP == b.mAP
    c = metrics_from_similarity(-(q @ gal.t()), qp, gp, qc, gc, max_rank=4)
    avg = average_trials([a, c], ranks=(1, 4, 10))
    assert avg["R1"] == pytest.approx(50 * (a.cmc[0] + c.cmc[0]))
    assert avg["R10"] == pytest.approx(50 * (a.cmc[3] + c.cmc[3]))  # beyond the CMC length
    assert avg["mINP"] == pytest.approx(50 * (a.mINP + c.mINP))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no query has a positive"):
        metrics_from_similarity(torch.ones(2, 3), [5, 6], [1, 2, 3], protocol="regdb")
    with pytest.raises(ValueError, match="NaN"):
        metrics_from_similarity(torch.tensor([[float("nan")]]), [1], [1], protocol="regdb")
    with pytest.raises(KeyError, match="protocol"):
        metrics_from_similarity(torch.ones(1, 1), [1], [1], protocol="market")
    with pytest.raises(ValueError, match="camids"):
        metrics_from_similarity(torch.ones(1, 1), [1], [1], protocol="sysu")
    with pytest.raises(ValueError, match="query_pids"):
        metrics_from_similarity(torch.ones(2, 1), [1], [1], protocol="regdb")
