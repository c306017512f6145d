"""Propot's prototype modules on small tensors: SAE/CAD blocks, DPP (eq. 2), IPP (eqs. 3-4), the
Table-4 parameter counts and loading prototype buffers from a state dict. Aggregation and L_p2i:
tests/test_propot_aggregation_loss.py; config keys and their validation:
tests/test_propot_config.py."""

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
    DomainConditionalPrompting,
    InstanceConditionalPrompting,
    PropotAttentionBlock,
    PropotPrototypes,
)

from .conftest import REPO

ABLATIONS = REPO / "configs" / "Propot" / "ablations"


def propot_cfg(opts=()):
    """Default Propot config with 2 heads and N_e = 2 (plus ``opts``)."""
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    add_propot_config(cfg)
    cfg.merge_from_list(
        ["MODEL.PROPOT.BLOCK.NUM_HEADS", "2", "MODEL.PROPOT.IPP.NUM_BLOCKS", "2", *opts]
    )
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
    dpp = DomainConditionalPrompting(n, d, num_contexts=k, depth=1, heads=2)
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
    separate = DomainConditionalPrompting(n, d, num_contexts=k, heads=2, share_encoder=False)
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
    """A 512-wide attention + 2048-wide FFN block has 3,152,384 parameters: the +3.15M of IPP in
    the paper's Table 4 (rows 3-5), whatever calls are enabled."""
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


def make_prototypes(opts=(), n=12, d=16):
    """Prototype modules of ``n`` identities, width ``d``, with random initial prototypes."""
    torch.manual_seed(3)
    protos = PropotPrototypes(propot_cfg(opts), n, d)
    protos.set_initial(torch.randn(n, d) * 3, torch.randn(n, d) * 3)
    return protos


def test_set_initial_rejects_another_identity_count():
    protos = make_prototypes()
    with pytest.raises(ValueError, match="must be"):
        protos.set_initial(torch.zeros(3, 16), torch.zeros(3, 16))
    assert bool(protos.initialized)  # the earlier prototypes stay


def test_loading_prototypes_of_another_identity_count_resets_initialized(caplog):
    """A state dict whose initial_v/initial_t are missing or mis-shaped (fast-reid's Checkpointer
    drops mis-shaped tensors with a warning, but the 0-dim ``initialized`` flag loads) leaves the
    prototypes uninitialised, so the hook recomputes them; a matching one loads as saved."""
    src = make_prototypes(n=12)
    src.set_initial(src.initial_v, src.initial_t, fingerprint=1234)
    state = src.state_dict()
    assert bool(state["initialized"]) and int(state["data_fingerprint"]) == 1234

    same = make_prototypes(["MODEL.PROPOT.DPP.CONTEXT_INIT_STD", "0.5"], n=12)
    same.initialized.fill_(False)
    same.load_state_dict(state)
    assert bool(same.initialized) and int(same.data_fingerprint) == 1234
    assert torch.equal(same.initial_v, src.initial_v)

    other = PropotPrototypes(propot_cfg(), 14, 16)
    own = other.state_dict()
    # what fast-reid's Checkpointer._load_model passes on: the keys of another shape removed
    kept = {k: v for k, v in state.items() if own[k].shape == v.shape}
    assert "initial_v" not in kept and "dpp.contexts" not in kept and "initialized" in kept
    with caplog.at_level("WARNING", logger="propot.modeling.prototypes"):
        other.load_state_dict(kept, strict=False)
    assert not bool(other.initialized)
    assert "recomputed by PropotInitialPrototypeHook" in caplog.text
    # an initialised model loading a state dict without the initial prototypes: reset as well
    other.set_initial(torch.ones(14, 16), torch.ones(14, 16), fingerprint=5)
    other.load_state_dict({k: v for k, v in kept.items() if k != "data_fingerprint"}, strict=False)
    assert not bool(other.initialized) and int(other.data_fingerprint) == 0
    # the same through load_state_dict(strict=True): an error naming the key, and still reset
    other.set_initial(torch.ones(14, 16), torch.ones(14, 16))
    with pytest.raises(RuntimeError, match="initial_v"):
        other.load_state_dict(state)
    assert not bool(other.initialized)


def test_post_ln_block_formula():
    torch.manual_seed(6)
    block = PropotAttentionBlock(8, 2, norm_first=False, cross=True)
    x, mem = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    a = block.attn(x, mem, mem, need_weights=False)[0]
    h = block.ln_1(x + a)
    hid = block.mlp[0](h)
    expected = block.ln_2(h + block.mlp[2](F.silu(1.702 * hid) / 1.702))
    assert torch.allclose(block(x, mem), expected, atol=1e-5)
