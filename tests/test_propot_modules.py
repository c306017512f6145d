"""Propot's modules against their equations on small tensors: SAE/CAD blocks, DPP (eq. 2), IPP
(eqs. 3-4), APA (eqs. 5-6) and the Table-5 variants, L_p2i (eqs. 10-12)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fastreid.config import get_cfg

from fastreid_ext.config import add_fastreid_ext_config
from fastreid_ext.engine import build_cfg
from propot.config import add_propot_config
from propot.modeling import (
    AdaptivePrototypeAggregation,
    DomainConditionalPrompting,
    InstanceConditionalPrompting,
    PropotAttentionBlock,
    PropotPrototypes,
    build_prototype_aggregation,
    prototype_to_instance_loss,
)

from .conftest import REPO

ABLATIONS = REPO / "configs" / "Propot" / "ablations"


def propot_cfg(opts=()):
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    add_propot_config(cfg)
    cfg.merge_from_list(["MODEL.PROPOT.HEADS", "2", "MODEL.PROPOT.IPP.DEPTH", "2", *opts])
    return cfg


def manual_block(block: PropotAttentionBlock, x: torch.Tensor, memory=None) -> torch.Tensor:
    """Pre-LN multi-head attention + FFN written out from the block's weights. x [M, d]."""
    d, h = x.shape[-1], block.attn.num_heads
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    q_in = block.ln_1(x)
    kv_in = block.ln_1_kv(memory) if block.cross else q_in
    q = q_in @ w[:d].t() + b[:d]
    k = kv_in @ w[d : 2 * d].t() + b[d : 2 * d]
    v = kv_in @ w[2 * d :].t() + b[2 * d :]
    heads = []
    for j in range(h):
        s = slice(j * d // h, (j + 1) * d // h)
        att = torch.softmax(q[:, s] @ k[:, s].t() / math.sqrt(d // h), dim=-1)
        heads.append(att @ v[:, s])
    x = x + block.attn.out_proj(torch.cat(heads, dim=-1))
    hid = block.mlp[0](block.ln_2(x))
    return x + block.mlp[2](hid * torch.sigmoid(1.702 * hid))


def test_dpp_output_is_the_sae_at_the_prototype_slot():
    torch.manual_seed(0)
    n, k, d = 5, 3, 8
    dpp = DomainConditionalPrompting(n, d, context_length=k, depth=1, heads=2)
    pt_v, pt_t = torch.randn(n, d), torch.randn(n, d)
    ids = torch.tensor([3, 0])
    a_v, a_t = dpp(ids, pt_v[ids], pt_t[ids])
    assert a_v.shape == (2, d) and a_t.shape == (2, d)
    block = dpp.encoders[0].blocks[0]
    for row, i in enumerate(ids.tolist()):
        seq_v = torch.cat([dpp.contexts[0, i], pt_v[i : i + 1]])  # [X_i]_1..K, pt_i
        seq_t = torch.cat([dpp.contexts[1, i], pt_t[i : i + 1]])
        assert torch.allclose(a_v[row], manual_block(block, seq_v)[-1], atol=1e-5)
        assert torch.allclose(a_t[row], manual_block(block, seq_t)[-1], atol=1e-5)
    # the visual and textual contexts differ, the SAE is shared; a subset equals the full rows
    full_v, full_t = dpp(None, pt_v, pt_t)
    assert torch.allclose(full_v[ids], a_v, atol=1e-6) and torch.allclose(
        full_t[ids], a_t, atol=1e-6
    )
    assert dpp.contexts.shape == (2, n, k, d)
    separate = DomainConditionalPrompting(n, d, context_length=k, heads=2, share_encoder=False)
    assert len(separate.encoders) == 2


def test_ipp_calls_match_eqs_3_and_4():
    torch.manual_seed(1)
    m, b, d = 4, 6, 8
    ipp = InstanceConditionalPrompting(d, depth=2, heads=2)
    q_v, q_t, feat_v, feat_t = (
        torch.randn(m, d),
        torch.randn(m, d),
        torch.randn(b, d),
        torch.randn(b, d),
    )
    out = ipp(q_v, q_t, feat_v, feat_t)
    assert set(out) == {"intra_v", "intra_t", "inter_v", "inter_t"}
    blocks = ipp.decoders["shared"].blocks

    def cad(q, mem):
        for block in blocks:
            q = manual_block(block, q, mem)
        return q

    assert torch.allclose(out["intra_v"], cad(q_v, feat_v), atol=1e-5)  # p_en^v = CAD(pt^v, V_B)
    assert torch.allclose(out["intra_t"], cad(q_t, feat_t), atol=1e-5)  # p_en^t = CAD(pt^t, T_B)
    assert torch.allclose(out["inter_v"], cad(q_v, feat_t), atol=1e-5)  # p_eo^v = CAD(pt^v, T_B)
    assert torch.allclose(out["inter_t"], cad(q_t, feat_v), atol=1e-5)  # p_eo^t = CAD(pt^t, V_B)
    # no attention among prototypes: one query alone gives its row of the batched result
    alone = ipp(q_v[2:3], q_t[2:3], feat_v, feat_t)
    assert torch.allclose(alone["inter_t"][0], out["inter_t"][2], atol=1e-6)
    # intra only / per-call decoders / tied blocks
    intra = InstanceConditionalPrompting(d, depth=3, heads=2, inter=False, sharing="per_call")
    assert set(intra(q_v, q_t, feat_v, feat_t)) == {"intra_v", "intra_t"}
    assert set(intra.decoders) == {"intra_v", "intra_t"}
    tied = InstanceConditionalPrompting(d, depth=3, heads=2, tie_blocks=True)
    assert len(tied.decoders["shared"].blocks) == 1 and tied.decoders["shared"].depth == 3
    expected = q_t
    for _ in range(3):  # one block applied N_e times
        expected = manual_block(tied.decoders["shared"].blocks[0], expected, feat_v)
    assert torch.allclose(tied(q_v, q_t, feat_v, feat_t)["inter_t"], expected, atol=1e-5)


def test_paper_block_parameter_count():
    """A 512-wide attention + 2048-wide FFN block has 3,152,384 parameters (text-reid.md §3.3)."""
    block = PropotAttentionBlock(512, 8, ffn_ratio=4)
    assert sum(p.numel() for p in block.parameters()) == 3_152_384


# Table 4: parameters added to the 155.26M baseline (CUHK-PEDES, N = 11003, d = 512), in M.
TABLE4_ADDED = {
    "table4_0_baseline": 0.0,
    "table4_1_inipt": 0.0,
    "table4_2_dpp": 203.48 - 155.26,
    "table4_3_ipp_intra": 158.41 - 155.26,
    "table4_4_ipp_inter": 158.41 - 155.26,
    "table4_5_ipp": 158.41 - 155.26,
    "table4_6_dpp_ipp": 206.64 - 155.26,
}


@pytest.mark.parametrize("row", sorted(TABLE4_ADDED))
def test_table4_prototype_parameters_match_the_paper(row):
    cfg = build_cfg(str(ABLATIONS / f"{row}.yml"))
    added = 0
    if cfg.MODEL.PROPOT.ENABLED:
        protos = PropotPrototypes(cfg, 11003, 512)
        added = sum(p.numel() for p in protos.parameters())
    assert added / 1e6 == pytest.approx(TABLE4_ADDED[row], abs=0.011)


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
    # temperature and cosine options
    tau = AdaptivePrototypeAggregation(tau=0.5)(pt, cands, 0)
    assert not torch.allclose(tau, out)
    # without candidates (Table 4 row 1) the final prototype is the initial one
    assert torch.equal(AdaptivePrototypeAggregation()(pt, cands[:0], 0), pt)


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
    with pytest.raises(KeyError, match="AGGREGATION.NAME"):
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
    # no identity of the batch among the prototypes: 0, still differentiable
    protos.requires_grad_(True)
    zero = prototype_to_instance_loss(protos, torch.tensor([1, 2]), feats, pids, tau)
    assert zero.item() == 0.0
    zero.backward()


def _prototypes(opts=(), n=12, d=16):
    torch.manual_seed(3)
    protos = PropotPrototypes(propot_cfg(opts), n, d)
    protos.set_initial(torch.randn(n, d) * 3, torch.randn(n, d) * 3)
    return protos


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
        ("MODEL.PROPOT.AGGREGATION.NAME", "mlp", "MODEL.PROPOT.NORM_FIRST", "False"),
    ],
)
def test_batch_identities_only_equals_all_prototypes(opts):
    """Computing DPP/IPP/APA for the batch identities only gives the loss and the gradients of
    the computation over all N prototypes (text-reid.md §3.4 [derived])."""
    protos = _prototypes(opts)
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
    protos = _prototypes()
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
    det = _prototypes(["MODEL.PROPOT.IPP.DETACH_INSTANCES", "True"])
    v.grad = None
    ids = torch.unique(pids)
    p_v, _ = det(ids, v, t)
    p_v.sum().backward()
    assert v.grad is None or v.grad.abs().sum() == 0


def test_invalid_settings_name_the_key():
    with pytest.raises(KeyError, match="IPP.SHARING"):
        _prototypes(["MODEL.PROPOT.IPP.SHARING", "some"])
    with pytest.raises(ValueError, match="IPP.QUERY 'adapted'"):
        _prototypes(["MODEL.PROPOT.IPP.QUERY", "adapted", "MODEL.PROPOT.DPP.ENABLED", "False"])
    with pytest.raises(ValueError, match="none is enabled"):
        _prototypes(
            [
                "MODEL.PROPOT.AGGREGATION.NAME",
                "learned",
                "MODEL.PROPOT.DPP.ENABLED",
                "False",
                "MODEL.PROPOT.IPP.INTRA",
                "False",
                "MODEL.PROPOT.IPP.INTER",
                "False",
            ]
        )
    with pytest.raises(ValueError, match="must be"):
        _prototypes().set_initial(torch.zeros(3, 16), torch.zeros(3, 16))
    with pytest.raises(KeyError, match="P2I_REDUCTION"):
        prototype_to_instance_loss(
            torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 2), torch.zeros(1), reduction="x"
        )


def test_post_ln_block_formula():
    torch.manual_seed(6)
    block = PropotAttentionBlock(8, 2, norm_first=False, cross=True)
    x, mem = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    a = block.attn(x, mem, mem, need_weights=False)[0]
    h = block.ln_1(x + a)
    hid = block.mlp[0](h)
    expected = block.ln_2(h + block.mlp[2](F.silu(1.702 * hid) / 1.702))
    assert torch.allclose(block(x, mem), expected, atol=1e-5)
