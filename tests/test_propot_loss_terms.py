"""Propot's meta-architecture wired to the paper: every loss term of a hand-made batch against its
formula with the *intended* inputs, and every Table 4 row's module set written out by hand.

* eq. (13): ``L = L_sdm + L_id + lambda_1 L_p2i``; eqs. (10)-(12): L_p2i is the image-side term
  (visual prototypes p^v against the image instances V_B) plus the text-side term (textual
  prototypes p^t against the text instances T_B), each an InfoNCE over the batch's instances of
  the same modality (README "Modules" table). The expected values below are computed from the
  encoder outputs with an InfoNCE written out here, and the test also checks that the planted
  wiring bugs (visual prototypes into the text-side term, swapped CAD memories) give another
  value, so they cannot pass.
* Table 4: which prototype modules each row builds (README "Ablations"), and the prototypes
  each row computes (p = pt, pt + p_a, pt + p_en, pt + p_eo, APA over 2 or 3 candidates), written
  out from the paper's equations, never read from the ``MODEL.PROPOT`` switches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

import propot  # noqa: F401  (registers PropotT2I and MODEL.PROPOT)
from fastreid_ext.config import add_fastreid_ext_config, apply_config_extensions
from fastreid_ext.modeling.losses import identity_loss, sdm_loss
from fastreid_ext.text import ClipTokenizer, mask_tokens

from .conftest import REPO

ABLATIONS = REPO / "configs" / "Propot" / "ablations"
NUM_IDS = 5
P2I_WEIGHT, P2I_TAU, SDM_TAU = 0.7, 0.05, 0.3


def _batch():
    """Six pairs of five identities (identity 0 twice), with MLM inputs for row 7."""
    g = torch.Generator().manual_seed(0)
    caps = [f"a person in a {c} shirt" for c in ("red", "blue", "green", "black", "white", "red")]
    ids = ClipTokenizer()(caps)
    mlm_ids, mlm_labels = mask_tokens(ids, g, prob=0.5)
    return {
        "images": torch.rand(6, 3, 64, 32, generator=g) * 255,
        "caption_ids": ids,
        "mlm_ids": mlm_ids,
        "mlm_labels": mlm_labels,
        "targets": torch.tensor([0, 1, 2, 3, 4, 0]),
    }


def _cfg(config: str = "table4_6_dpp_ipp.yml", *opts):
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    cfg.merge_from_file(str(ABLATIONS / config))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.CLIP.NAME", "tiny-vit",
            "MODEL.CLIP.RANDOM_INIT", "True",
            "MODEL.CLIP.WEIGHTS", "",
            "MODEL.T2I.MLM_HEADS", "2",
            "MODEL.T2I.MLM_DEPTH", "1",
            "MODEL.T2I.SDM_TAU", str(SDM_TAU),
            "MODEL.PROPOT.BLOCK.NUM_HEADS", "2",
            "MODEL.PROPOT.IPP.NUM_BLOCKS", "2",
            "MODEL.PROPOT.P2I.WEIGHT", str(P2I_WEIGHT),
            "MODEL.PROPOT.P2I.TAU", str(P2I_TAU),
            "MODEL.HEADS.NUM_CLASSES", str(NUM_IDS),
            "INPUT.SIZE_TRAIN", "[64,32]",
            "INPUT.SIZE_TEST", "[64,32]",
            *opts,
        ]
    )  # fmt: skip
    return cfg


def _model(config: str = "table4_6_dpp_ipp.yml", *opts):
    torch.manual_seed(0)
    model = build_model(_cfg(config, *opts)).train()
    if getattr(model, "prototypes", None) is not None:
        d = model.prototypes.dim
        g = torch.Generator().manual_seed(1)
        # small initial prototypes, so APA's softmax does not saturate on one candidate
        model.prototypes.set_initial(
            torch.randn(NUM_IDS, d, generator=g), torch.randn(NUM_IDS, d, generator=g)
        )
    return model


def infonce(protos, proto_ids, feats, pids, tau):
    """eqs. (11)/(12), InfoNCE form, mean over the prototypes with positives, written out."""
    terms = []
    for p, i in zip(protos, proto_ids.tolist()):
        pos = (pids == i).nonzero().flatten().tolist()
        if not pos:
            continue
        logits = torch.stack([F.cosine_similarity(p, x, dim=0) for x in feats]) / tau
        log_s = logits - torch.logsumexp(logits, dim=0)
        terms.append(-sum(log_s[j] for j in pos) / len(pos))
    return sum(terms) / len(terms)


def _features(model, batch):
    with torch.no_grad():
        feats = model.extract(batch)
    return feats["image"].global_feat.float(), feats["text"].global_feat.float()


def test_every_loss_term_equals_its_formula_with_the_intended_inputs():
    model = _model()
    batch = _batch()
    pids = batch["targets"]
    captured = []
    handle = model.prototypes.register_forward_hook(
        lambda mod, args, out: captured.append(([a.detach() for a in args[1:]], out))
    )
    with torch.no_grad():
        losses = model(batch)
    handle.remove()
    assert set(losses) == {"loss_sdm", "loss_id", "loss_p2i"}
    v, t = _features(model, batch)
    # the prototypes saw the image features as V_B and the text features as T_B
    (seen_v, seen_t), _ = captured[0]
    assert torch.allclose(seen_v, v, atol=1e-6) and torch.allclose(seen_t, t, atol=1e-6)
    ids = torch.unique(pids)
    with torch.no_grad():
        p_v, p_t = model.prototypes(ids, v, t)
        sdm = sdm_loss(v, t, pids, SDM_TAU, model.sdm_eps)
        ident = identity_loss(model.classifier(v), model.classifier(t), pids)
    image_side = infonce(p_v, ids, v, pids, P2I_TAU)
    text_side = infonce(p_t, ids, t, pids, P2I_TAU)
    assert float(losses["loss_sdm"]) == pytest.approx(float(sdm), rel=1e-5)
    assert float(losses["loss_id"]) == pytest.approx(float(ident), rel=1e-5)
    expected = P2I_WEIGHT * (image_side + text_side)
    assert float(losses["loss_p2i"]) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    # the planted wirings give other values, so this test tells them apart (swapping V_B and
    # T_B in the CAD is invisible here, APA being symmetric in p_en/p_eo: see the Table 4 rows 3-4)
    wrong = {
        "visual prototypes in the text-side term": image_side + infonce(p_v, ids, t, pids, P2I_TAU),
        "textual prototypes in the image-side term": infonce(p_t, ids, v, pids, P2I_TAU)
        + text_side,
        "text-side prototypes against the image instances": image_side
        + infonce(p_t, ids, v, pids, P2I_TAU),
        "image-side term only": image_side,
    }
    for what, total in wrong.items():
        assert abs(float(P2I_WEIGHT * total - expected)) > 1e-3, what


def test_inipt_prototypes_are_the_frozen_sums_of_their_own_modality():
    """Table 4 row 1 (p = pt): the whole L_p2i is known from the buffers alone."""
    model = _model("table4_1_inipt.yml")
    batch = _batch()
    pids = batch["targets"]
    with torch.no_grad():
        losses = model(batch)
    v, t = _features(model, batch)
    ids = torch.unique(pids)
    pt_v, pt_t = model.prototypes.initial_v[ids], model.prototypes.initial_t[ids]
    expected = P2I_WEIGHT * (
        infonce(pt_v, ids, v, pids, P2I_TAU) + infonce(pt_t, ids, t, pids, P2I_TAU)
    )
    assert float(losses["loss_p2i"]) == pytest.approx(float(expected), rel=1e-5)
    for wrong in (
        infonce(pt_v, ids, v, pids, P2I_TAU) + infonce(pt_v, ids, t, pids, P2I_TAU),
        infonce(pt_t, ids, v, pids, P2I_TAU) + infonce(pt_t, ids, t, pids, P2I_TAU),
        infonce(pt_v, ids, t, pids, P2I_TAU) + infonce(pt_t, ids, v, pids, P2I_TAU),
    ):
        assert abs(float(P2I_WEIGHT * wrong - expected)) > 1e-3


# ------------------------------------------------------------------------------------ Table 4
# Written out from the README's Table 4 (row: config, which modules it has), not from switches:
# (prototypes built, DPP, IPP intra, IPP inter, MLM)
TABLE4 = {
    "table4_0_baseline.yml": (False, False, False, False, False),
    "table4_1_inipt.yml": (True, False, False, False, False),
    "table4_2_dpp.yml": (True, True, False, False, False),
    "table4_3_ipp_intra.yml": (True, False, True, False, False),
    "table4_4_ipp_inter.yml": (True, False, False, True, False),
    "table4_5_ipp.yml": (True, False, True, True, False),
    "table4_6_dpp_ipp.yml": (True, True, True, True, False),
    "table4_7_full.yml": (True, True, True, True, True),
}


def test_table4_lists_every_row_config():
    assert sorted(p.name for p in ABLATIONS.glob("table4_*.yml")) == sorted(TABLE4)


def _apa(pt, cands):
    """eqs. (5)-(6): w_k = softmax_k(pt . p_k), p = pt + sum_k w_k p_k."""
    scores = torch.stack([(pt * c).sum(-1) for c in cands], dim=-1)  # [M, K]
    w = torch.softmax(scores, dim=-1)
    return pt + sum(w[:, k : k + 1] * c for k, c in enumerate(cands))


@pytest.mark.parametrize("config", sorted(TABLE4))
def test_table4_row_builds_its_modules_and_computes_its_prototypes(config):
    built, dpp, intra, inter, mlm = TABLE4[config]
    model = _model(config)
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    batch = _batch()
    with torch.no_grad():
        losses = model(batch)
    expected_losses = {"loss_sdm", "loss_id"} | ({"loss_p2i"} if built else set())
    assert set(losses) == expected_losses | ({"loss_mlm"} if mlm else set())
    assert any(n.startswith("mlm_head.") for n in names) == mlm
    assert any(n.startswith("prototypes.") for n in names) == built
    if not built:
        return
    assert any(n.startswith("prototypes.dpp.") for n in names) == dpp
    assert ("prototypes.dpp.contexts" in names) == dpp
    assert any(n.startswith("prototypes.ipp.") for n in names) == (intra or inter)
    # the prototypes this row computes, from the paper's equations
    v, t = _features(model, batch)
    ids = torch.unique(batch["targets"])
    protos = model.prototypes
    pt_v, pt_t = protos.initial_v[ids], protos.initial_t[ids]
    cand_v, cand_t = [], []
    with torch.no_grad():
        if dpp:
            a_v, a_t = protos.dpp(ids, pt_v, pt_t)
            cand_v.append(a_v)
            cand_t.append(a_t)
        if intra or inter:
            cad = protos.ipp.decoders["shared"]

            def enrich(q, memory):
                return cad(q[None], memory[None])[0]

        if intra:  # eq. (3): p_en^v = CAD(pt^v, V_B), p_en^t = CAD(pt^t, T_B)
            cand_v.append(enrich(pt_v, v))
            cand_t.append(enrich(pt_t, t))
        if inter:  # eq. (4): p_eo^v = CAD(pt^v, T_B), p_eo^t = CAD(pt^t, V_B)
            cand_v.append(enrich(pt_v, t))
            cand_t.append(enrich(pt_t, v))
        got_v, got_t = protos(ids, v, t)
    want_v = _apa(pt_v, cand_v) if cand_v else pt_v
    want_t = _apa(pt_t, cand_t) if cand_t else pt_t
    assert torch.allclose(got_v, want_v, atol=1e-4) and torch.allclose(got_t, want_t, atol=1e-4)
    # no trainable prototype parameters without DPP / IPP (row 1: the frozen pt only)
    trainable = [n for n, p in protos.named_parameters() if p.requires_grad]
    assert bool(trainable) == (dpp or intra or inter)
