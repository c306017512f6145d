"""CPCL's PCM and ICPM losses against hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fastreid.config import CfgNode

from cpcl.config import ICPM_POSITIVES, add_cpcl_config
from cpcl.modeling.losses import hcm_losses, icpm_loss, icpm_positives, pcm_loss
from fastreid_ext.config import ConfigValueError
from fastreid_ext.modeling.losses import sdm_loss


def _ce(x: torch.Tensor, memory: torch.Tensor, y: int, tau: float) -> float:
    """-log softmax(cos(x, M) / tau)[y] for one sample, in float64 Python arithmetic."""
    x = x.double() / x.double().norm()
    logits = [float(x @ m.double()) / tau for m in memory]
    return -(logits[y] - math.log(sum(math.exp(v) for v in logits)))


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mv = F.normalize(torch.randn(3, 6, generator=g), dim=1)
    mt = F.normalize(torch.randn(2, 6, generator=g), dim=1)
    yv = torch.tensor([0, -1, 2, 0])
    yt = torch.tensor([1, 0, -1, -1])
    return v, t, yv, yt, mv, mt


@pytest.mark.parametrize("mode", ["hybrid", "intra", "cross"])
def test_pcm_is_the_mean_of_per_term_cross_entropies(batch, mode):
    v, t, yv, yt, mv, mt = batch
    tau = 0.05

    def term(x, memory, labels):
        vals = [_ce(x[i], memory, int(labels[i]), tau) for i in range(4) if labels[i] >= 0]
        return sum(vals) / len(vals)

    terms = {
        "intra": [term(v, mv, yv), term(t, mt, yt)],
        "cross": [term(t, mv, yv), term(v, mt, yt)],
    }
    terms["hybrid"] = terms["intra"] + terms["cross"]
    expected = sum(terms[mode]) / len(terms[mode])
    got = pcm_loss(v, t, yv, yt, mv, mt, tau, mode)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_pcm_skips_unlabelled_terms_and_keeps_the_graph_without_labels(batch):
    v, t, yv, yt, mv, mt = batch
    none = torch.full((4,), -1)
    # only the text labels exist: intra text and cross image->M^t
    only_text = pcm_loss(v, t, none, yt, mv, mt, 0.05, "hybrid")
    both_text_terms = (
        pcm_loss(v, t, none, yt, mv, mt, 0.05, "intra")
        + pcm_loss(v, t, none, yt, mv, mt, 0.05, "cross")
    ) / 2
    assert only_text.item() == pytest.approx(both_text_terms.item())
    v.requires_grad_(True)
    zero = pcm_loss(v, t, none, none, mv, mt, 0.05, "hybrid")
    assert zero.item() == 0.0
    zero.backward()
    assert v.grad is not None and torch.all(v.grad == 0)
    with pytest.raises(ConfigValueError, match="MODEL.CPCL.PCM.NAME"):
        pcm_loss(v, t, yv, yt, mv, mt, 0.05, "single")


def test_icpm_positives_per_mode():
    yv = torch.tensor([0, 0, -1, -1, 1])
    yt = torch.tensor([2, -1, -1, 2, 2])
    eye = torch.eye(5, dtype=torch.bool)
    img = eye.clone()
    img[0, 1] = img[1, 0] = True
    txt = eye.clone()
    for i in (0, 3, 4):
        for j in (0, 3, 4):
            txt[i, j] = True
    assert torch.equal(icpm_positives(yv, yt, "instance"), eye)
    assert torch.equal(icpm_positives(yv, yt, "image"), img)  # -1 never matches -1
    assert torch.equal(icpm_positives(yv, yt, "text"), txt)
    assert torch.equal(icpm_positives(yv, yt, "either"), img | txt)


def test_icpm_equals_kl_formula_and_sdm_with_same_positives():
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    pids = torch.tensor([0, 1, 0, 2, 1])
    pos = pids.view(-1, 1) == pids.view(1, -1)
    tau, eps = 0.1, 1e-8
    got = icpm_loss(v, t, pos, tau, eps)
    # the same distribution matching as IRRA's SDM when positives come from labels
    torch.testing.assert_close(got, sdm_loss(v, t, pids, tau, eps))
    # explicit KL for the CMPM projection form (tau = 0)
    s_i2t = v @ F.normalize(t, dim=1).t()
    s_t2i = t @ F.normalize(v, dim=1).t()
    q = pos.float() / pos.float().sum(1, keepdim=True)
    expected = 0.0
    for s in (s_i2t, s_t2i):
        p = s.softmax(1)
        expected += (p * (p.log() - (q + eps).log())).sum(1).mean()
    torch.testing.assert_close(icpm_loss(v, t, pos, 0.0, eps), expected)


def test_icpm_rejects_bad_shapes():
    with pytest.raises(ValueError, match="positives must be"):
        icpm_loss(torch.randn(3, 4), torch.randn(3, 4), torch.eye(2, dtype=torch.bool))


def test_icpm_positives_always_include_captions_of_the_same_image():
    # pairs 0/1 and 2/3 show the same image; pair 0/1's image is an outlier
    yv = torch.tensor([-1, -1, 0, 0, -1])
    yt = torch.tensor([-1, 2, -1, -1, 2])
    ids = torch.tensor([7, 7, 3, 3, 9])
    same_image = ids.view(-1, 1) == ids.view(1, -1)
    for mode in ICPM_POSITIVES:
        pos = icpm_positives(yv, yt, mode, image_ids=ids)
        assert torch.equal(pos, icpm_positives(yv, yt, mode) | same_image), mode
        assert pos[0, 1] and pos[1, 0] and not pos[0, 4]
    assert torch.equal(icpm_positives(yv, yt, "instance", ids), same_image)
    assert icpm_positives(yv, yt, "text", ids)[1, 4]  # shared text label
    with pytest.raises(ValueError, match="image_ids must be"):
        icpm_positives(yv, yt, "image", image_ids=ids[:3])


def _cpcl_cfg(tau: float) -> CfgNode:
    cfg = CfgNode()
    cfg.MODEL = CfgNode()
    add_cpcl_config(cfg)
    cfg.MODEL.CPCL.ICPM.TAU = tau
    cfg.MODEL.CPCL.ICPM.POSITIVES = "either"
    return cfg.MODEL.CPCL


@pytest.mark.parametrize("tau", [0.02, 0.0])
def test_hcm_losses_are_float32_inside_bf16_autocast(tau):
    g = torch.Generator().manual_seed(2)
    v, t = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    mv = F.normalize(torch.randn(6, 64, generator=g), dim=1)
    mt = F.normalize(torch.randn(5, 64, generator=g), dim=1)
    yv, yt = torch.randint(-1, 6, (32,), generator=g), torch.randint(-1, 5, (32,), generator=g)
    ids = torch.arange(32) // 2
    cfg = _cpcl_cfg(tau)
    ref = hcm_losses(v, t, yv, yt, mv, mt, cfg, ids)
    ref_bf16_inputs = hcm_losses(v.bfloat16().float(), t.bfloat16().float(), yv, yt, mv, mt, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hcm_losses(v, t, yv, yt, mv, mt, cfg, ids)
        # features as a bf16 forward would give them (memories stay float32)
        got_bf16_inputs = hcm_losses(v.bfloat16(), t.bfloat16(), yv, yt, mv, mt, cfg)
        # the raw losses inside autocast do run in bf16: the test is sensitive
        raw = icpm_loss(v, t, icpm_positives(yv, yt, "either", ids), tau)
    assert set(got) == {"loss_pcm", "loss_icpm"}
    for key in got:
        assert got[key].dtype == torch.float32
        assert torch.equal(got[key], ref[key]), key
        assert torch.equal(got_bf16_inputs[key], ref_bf16_inputs[key]), key
    assert not torch.allclose(raw.float(), ref["loss_icpm"], rtol=1e-4, atol=0)


def test_hcm_losses_follow_the_enabled_switches_and_weights():
    g = torch.Generator().manual_seed(3)
    v, t = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    mv = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    mt = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    yv, yt = torch.randint(-1, 3, (8,), generator=g), torch.randint(-1, 4, (8,), generator=g)
    cfg = _cpcl_cfg(0.02)
    both = hcm_losses(v, t, yv, yt, mv, mt, cfg)
    assert set(both) == {"loss_pcm", "loss_icpm"}
    assert both["loss_pcm"].item() > 0 and both["loss_icpm"].item() > 0
    cfg.PCM.ENABLED = False
    assert set(hcm_losses(v, t, yv, yt, mv, mt, cfg)) == {"loss_icpm"}
    cfg.PCM.ENABLED, cfg.ICPM.ENABLED, cfg.PCM.WEIGHT = True, False, 0.5
    only_pcm = hcm_losses(v, t, yv, yt, mv, mt, cfg)
    assert set(only_pcm) == {"loss_pcm"}
    torch.testing.assert_close(only_pcm["loss_pcm"], 0.5 * both["loss_pcm"])
