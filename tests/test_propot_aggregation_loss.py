"""Propot's aggregation and loss against their equations on small tensors: APA (eqs. 5-6) and
its options, the Table-5 variants, L_p2i (eqs. 10-12), the batch-identities-only computation and
where the gradients go."""

from __future__ import annotations

import math

import pytest
import torch

from fastreid_ext.config import ConfigValueError
from propot.modeling import (
    AdaptivePrototypeAggregation,
    build_prototype_aggregation,
    prototype_to_instance_loss,
)

from .test_propot_modules import make_prototypes, propot_cfg


def test_apa_equals_eqs_5_and_6_by_hand():
    pt = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    cands = torch.tensor(
        [
            [[0.5, 0.5], [1.0, 0.0]],  # p_a
            [[1.0, 1.0], [0.0, 1.0]],  # p_en
            [[-1.0, 0.0], [1.0, 1.0]],  # p_eo
        ]
    )
    out = AdaptivePrototypeAggregation()(pt, cands, modality=0)
    # identity 0: w = softmax(0.5, 1, -1); identity 1: w = softmax(0, 2, 2)
    e = [math.exp(0.5), math.exp(1.0), math.exp(-1.0)]
    w0 = [x / sum(e) for x in e]
    e1 = [1.0, math.exp(2.0), math.exp(2.0)]
    w1 = [x / sum(e1) for x in e1]
    expected0 = [1 + 0.5 * w0[0] + 1 * w0[1] - 1 * w0[2], 0 + 0.5 * w0[0] + 1 * w0[1]]
    expected1 = [1 * w1[0] + 1 * w1[2], 2 + 1 * w1[1] + 1 * w1[2]]
    assert torch.allclose(out, torch.tensor([expected0, expected1]), atol=1e-6)
    # without candidates (Table 4 row 1) the final prototype is the initial one
    assert torch.equal(AdaptivePrototypeAggregation()(pt, cands[:0], 0), pt)


def _softmax(scores):
    e = [math.exp(x) for x in scores]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("normalize", [False, True])
def test_apa_tau_and_normalize_options_by_hand(normalize):
    """``AGGREGATION.APA.TAU`` divides the scores of eq. (5); ``APA.NORMALIZE`` makes them
    cosines. The weighted sum of eq. (6) still uses the raw pt and candidates."""
    pt = [[1.0, 0.0], [0.0, 2.0]]
    cands = [
        [[0.5, 0.5], [1.0, 0.0]],  # p_a
        [[1.0, 1.0], [0.0, 1.0]],  # p_en
        [[-1.0, 0.0], [1.0, 1.0]],  # p_eo
    ]
    tau, r = 0.5, 1 / math.sqrt(2)
    if normalize:  # cos(pt_i, p_k,i)
        scores = [[r, r, -1.0], [0.0, 1.0, r]]
    else:  # pt_i . p_k,i
        scores = [[0.5, 1.0, -1.0], [0.0, 2.0, 2.0]]
    expected = []
    for i in range(2):
        w = _softmax([s / tau for s in scores[i]])
        expected.append([pt[i][j] + sum(w[k] * cands[k][i][j] for k in range(3)) for j in range(2)])
    cfg = propot_cfg(
        [
            "MODEL.PROPOT.AGGREGATION.APA.TAU", str(tau),
            "MODEL.PROPOT.AGGREGATION.APA.NORMALIZE", str(normalize),
        ]
    )  # fmt: skip
    apa = build_prototype_aggregation(cfg, dim=2, num_candidates=3)
    assert isinstance(apa, AdaptivePrototypeAggregation)
    assert apa.tau == tau and apa.normalize == normalize
    out = apa(torch.tensor(pt), torch.tensor(cands), modality=1)
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)
    with pytest.raises(ValueError, match="tau must be > 0"):
        AdaptivePrototypeAggregation(tau=0.0)


@pytest.mark.parametrize("name", ["sum", "mean", "mlp", "learned", "APA"])
def test_table5_aggregations(name):
    torch.manual_seed(2)
    cfg = propot_cfg(["MODEL.PROPOT.AGGREGATION.NAME", name])
    agg = build_prototype_aggregation(cfg, dim=6, num_candidates=3)
    pt, cands = torch.randn(4, 6), torch.randn(3, 4, 6)
    out = agg(pt, cands, modality=1)
    assert out.shape == (4, 6)
    if name == "sum":
        assert torch.allclose(out, pt + cands.sum(0), atol=1e-6)
    elif name == "mean":
        assert torch.allclose(out, pt + cands.mean(0), atol=1e-6)
    elif name == "learned":  # starts as the mean; the logits get a gradient
        assert torch.allclose(out, pt + cands.mean(0), atol=1e-6)
        out.sum().backward()
        assert agg.logits.grad[1].abs().sum() > 0 and agg.logits.grad[0].abs().sum() == 0
    elif name == "mlp":
        scores = agg.mlps[1](cands).squeeze(-1).t().softmax(dim=1)  # [M, 3]
        assert torch.allclose(out, pt + torch.einsum("mn,nmd->md", scores, cands), atol=1e-6)
    no_res = build_prototype_aggregation(
        propot_cfg(
            ["MODEL.PROPOT.AGGREGATION.NAME", name, "MODEL.PROPOT.AGGREGATION.RESIDUAL", "False"]
        ),
        6,
        3,
    )
    if name in ("sum", "mean", "APA"):
        assert torch.allclose(no_res(pt, cands, 1), out - pt, atol=1e-6)
    with pytest.raises(ConfigValueError, match=r"MODEL\.PROPOT\.AGGREGATION\.NAME = 'max'"):
        build_prototype_aggregation(propot_cfg(["MODEL.PROPOT.AGGREGATION.NAME", "max"]), 6, 3)


def test_prototype_to_instance_loss_hand_made_case():
    # 2-d features; prototypes of identities 7 and 9 (9 has no instance in the batch)
    protos = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    proto_ids = torch.tensor([7, 9])
    feats = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pids = torch.tensor([7, 5, 7])
    tau = 0.5
    # cos(p_7, x) = [1, 0, 1/sqrt(2)]
    logits = [1 / tau, 0.0, (1 / math.sqrt(2)) / tau]
    z = sum(math.exp(s) for s in logits)
    s = [math.exp(x) / z for x in logits]
    with_log = -(math.log(s[0]) + math.log(s[2])) / 2
    no_log = -(s[0] + s[2]) / 2
    got = prototype_to_instance_loss(protos, proto_ids, feats, pids, tau, use_log=True)
    assert got.item() == pytest.approx(with_log, rel=1e-6)
    got = prototype_to_instance_loss(protos, proto_ids, feats, pids, tau, use_log=False)
    assert got.item() == pytest.approx(no_log, rel=1e-6)
    # two identities with positives: sum vs mean; scale of prototypes/features is irrelevant
    pids2 = torch.tensor([7, 9, 7])
    logits9 = [0.0, 1 / tau, (1 / math.sqrt(2)) / tau]
    l9 = -math.log(math.exp(logits9[1]) / sum(math.exp(x) for x in logits9))
    got_sum = prototype_to_instance_loss(protos * 5, proto_ids, feats, pids2, tau, reduction="sum")
    got_mean = prototype_to_instance_loss(
        protos, proto_ids, feats * 3, pids2, tau, reduction="mean"
    )
    assert got_sum.item() == pytest.approx(with_log + l9, rel=1e-6)
    assert got_mean.item() == pytest.approx((with_log + l9) / 2, rel=1e-6)
    # the default reduction is the mean, as MODEL.PROPOT.P2I.REDUCTION's default
    default = prototype_to_instance_loss(protos, proto_ids, feats, pids2, tau)
    assert default.item() == pytest.approx((with_log + l9) / 2, rel=1e-6)
    assert propot_cfg().MODEL.PROPOT.P2I.REDUCTION == "mean"
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean'"):
        prototype_to_instance_loss(protos, proto_ids, feats, pids, tau, reduction="max")
    # no identity of the batch among the prototypes: 0, still differentiable
    protos.requires_grad_(True)
    zero = prototype_to_instance_loss(protos, torch.tensor([1, 2]), feats, pids, tau)
    assert zero.item() == 0.0
    zero.backward()


def _loss(protos, v, t, pids, batch_only):
    if batch_only:
        ids = torch.unique(pids)
    else:
        ids = torch.arange(protos.num_ids)
    p_v, p_t = protos(ids if batch_only else None, v, t)
    return prototype_to_instance_loss(p_v, ids, v, pids, 0.1) + prototype_to_instance_loss(
        p_t, ids, t, pids, 0.1
    )


@pytest.mark.parametrize(
    "opts",
    [
        (),
        ("MODEL.PROPOT.IPP.QUERY", "adapted", "MODEL.PROPOT.IPP.SHARING", "per_call"),
        ("MODEL.PROPOT.AGGREGATION.NAME", "mlp", "MODEL.PROPOT.BLOCK.NORM_FIRST", "False"),
    ],
)
def test_batch_identities_only_equals_all_prototypes(opts):
    """Computing DPP/IPP/APA for the batch identities only gives the loss and the gradients of
    the computation over all N prototypes: DPP encodes each identity's tokens on its own, the
    CAD has no attention among prototypes, and L_p2i skips identities without instances."""
    protos = make_prototypes(opts)
    torch.manual_seed(4)
    v = torch.randn(6, 16, requires_grad=True)
    t = torch.randn(6, 16, requires_grad=True)
    pids = torch.tensor([3, 3, 8, 0, 11, 8])
    results = []
    for batch_only in (True, False):
        protos.zero_grad()
        v.grad = t.grad = None
        loss = _loss(protos, v, t, pids, batch_only)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in protos.named_parameters()}
        results.append((loss.detach(), grads, v.grad.clone(), t.grad.clone()))
    (l1, g1, v1, t1), (l2, g2, v2, t2) = results
    assert torch.allclose(l1, l2, atol=1e-5)
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(t1, t2, atol=1e-5)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-5), k
    ctx_grad = g1["dpp.contexts"]
    present = torch.zeros(12, dtype=torch.bool)
    present[pids] = True
    assert ctx_grad[:, present].abs().sum() > 0 and ctx_grad[:, ~present].abs().sum() == 0


def test_gradients_reach_contexts_and_decoder_not_initial_prototypes():
    protos = make_prototypes()
    before = protos.initial_v.clone(), protos.initial_t.clone()
    opt = torch.optim.Adam(protos.parameters(), lr=0.1)
    torch.manual_seed(5)
    v, t = torch.randn(6, 16, requires_grad=True), torch.randn(6, 16, requires_grad=True)
    pids = torch.tensor([0, 1, 1, 2, 5, 5])
    _loss(protos, v, t, pids, True).backward()
    assert not protos.initial_v.requires_grad and protos.initial_v.grad is None
    assert protos.dpp.contexts.grad.abs().sum() > 0
    for name, p in protos.ipp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in protos.dpp.encoders.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert v.grad.abs().sum() > 0 and t.grad.abs().sum() > 0  # through the loss and the CAD
    opt.step()
    assert torch.equal(protos.initial_v, before[0]) and torch.equal(protos.initial_t, before[1])
    # DETACH_INSTANCES stops the CAD path only: the loss still reaches the features
    det = make_prototypes(["MODEL.PROPOT.IPP.DETACH_INSTANCES", "True"])
    v.grad = None
    ids = torch.unique(pids)
    p_v, _ = det(ids, v, t)
    p_v.sum().backward()
    assert v.grad is None or v.grad.abs().sum() == 0
