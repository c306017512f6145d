"""CSDN building blocks: MsPL prompt learner vs encode_text, SII fusion (degenerate and not),
the losses against brute force, phase-specific training, schedules and test features."""

from __future__ import annotations

import math

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

import csdn  # noqa: F401  (registers CSDN, its trainer and config keys)
from csdn.modeling.fusion import SemanticInformationIntegration
from csdn.modeling.losses import msel_loss, supcon_loss, wrt_triplet_loss
from csdn.modeling.meta_arch import PHASES
from csdn.modeling.prompt import IdentityPromptLearner
from csdn.phases import PhasePlan, PhaseSchedule, TimmCosineSchedule, build_phase_optimizer
from fastreid_ext.config import ConfigValueError, add_fastreid_ext_config, apply_config_extensions
from fastreid_ext.modeling.clip import create_clip
from fastreid_ext.text import ClipTokenizer

from .conftest import REPO

DEMO = str(REPO / "configs" / "CSDN" / "demo.yml")


def _cfg(*opts):
    """The demo config with overrides (``csdn`` is imported above: no plugin loading)."""
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    cfg.merge_from_file(DEMO)
    cfg.merge_from_list(["DATALOADER.NUM_INSTANCE", "2", *opts])
    cfg.MODEL.HEADS.NUM_CLASSES = 6
    return cfg


# ---------------------------------------------------------------------------------- MsPL
def test_prompt_with_template_word_embeddings_reproduces_encode_text():
    torch.manual_seed(0)
    clip = create_clip("tiny-rn", (64, 32), random_init=True).eval()
    learner = IdentityPromptLearner(3, clip.token_embedding)
    tok = ClipTokenizer(77)
    sentence = "A photo of a tall man in red person."
    ids = tok.encode(sentence)
    assert learner.num_ctx == 4 and learner.eot_index == int(ids.argmax()) == 11
    with torch.no_grad():
        learner.cls_ctx[1] = clip.token_embedding(ids[5:9])  # "tall man in red"
        prompts, eot = learner(torch.tensor([1, 1]))
        got = clip.encode_text_embeddings(prompts, eot).global_feat
        want = clip.encode_text(ids[None])
    assert prompts.shape == (2, 12, clip.text_width)  # truncated after EOT
    torch.testing.assert_close(got, want.expand(2, -1), rtol=1e-4, atol=1e-5)
    other = clip.encode_text_embeddings(*learner(torch.tensor([0]))).global_feat
    assert not torch.allclose(other, want, atol=1e-3)  # label 0 keeps its random tokens


def test_prompt_template_needs_placeholders():
    clip = create_clip("tiny-rn", (64, 32), random_init=True)
    with pytest.raises(ConfigValueError, match="MSPL.TEMPLATE = .*contiguous run of 'X'"):
        IdentityPromptLearner(2, clip.token_embedding, template="A photo of a person.")
    with pytest.raises(ConfigValueError, match="contiguous run of 'X'"):
        IdentityPromptLearner(2, clip.token_embedding, template="A X photo of a X person.")


# ---------------------------------------------------------------------------------- SII
def test_single_key_fusion_is_degenerate():
    torch.manual_seed(0)
    sii = SemanticInformationIntegration(8, "single_key", dropout=0.1).eval()
    t_vis, t_ir = torch.randn(5, 8), torch.randn(5, 8)
    fused = sii(t_vis, t_ir)
    assert fused.shape == (5, 8)
    assert torch.equal(sii.attention(t_vis, t_ir), torch.ones(5, 1))
    expected = t_vis + sii.common(torch.tanh(sii.value[0](t_ir)))
    torch.testing.assert_close(fused, expected)
    fused.sum().backward()
    assert float(sii.query[0].weight.grad.abs().max()) == 0.0
    assert float(sii.key[0].weight.grad.abs().max()) == 0.0
    assert float(sii.value[0].weight.grad.abs().max()) > 0.0


def test_two_key_fusion_attends_over_both_texts():
    torch.manual_seed(1)
    sii = SemanticInformationIntegration(8, "two_key", dropout=0.0)
    t_vis, t_ir = torch.randn(4, 8) * 3, torch.randn(4, 8) * 3
    a = sii.attention(t_vis, t_ir).detach()
    assert a.shape == (4, 2)
    torch.testing.assert_close(a.sum(1), torch.ones(4))
    assert float((a - 0.5).abs().max()) > 1e-3
    sii(t_vis, t_ir).sum().backward()
    assert float(sii.query[0].weight.grad.abs().max()) > 0.0
    with pytest.raises(ConfigValueError, match="MODEL.CSDN.SII.NAME = 'three_key'.*'two_key'"):
        SemanticInformationIntegration(8, "three_key")


# ---------------------------------------------------------------------------------- losses
def test_supcon_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    a, c = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    ya, yc = torch.tensor([0, 1, 1, 2, 0, 2]), torch.tensor([1, 0, 2, 1, 0])
    total = 0.0
    for i in range(6):
        logits = [float(a[i] @ c[j]) for j in range(5)]
        log_z = math.log(sum(math.exp(v) for v in logits))
        pos = [j for j in range(5) if yc[j] == ya[i]]
        total += -sum(logits[j] - log_z for j in pos) / len(pos)
    assert float(supcon_loss(a, c, ya, yc)) == pytest.approx(total / 6, rel=1e-5)


def test_wrt_triplet_matches_its_formula():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=g), torch.tensor([0, 0, 1, 1, 2, 2])
    total = 0.0
    for i in range(6):
        d = [float((x[i] - x[j]).norm()) for j in range(6)]
        pos = [j for j in range(6) if y[j] == y[i]]
        neg = [j for j in range(6) if y[j] != y[i]]
        wp = [math.exp(d[j]) for j in pos]
        wn = [math.exp(-d[j]) for j in neg]
        p = sum(w * d[j] for w, j in zip(wp, pos)) / sum(wp)
        n = sum(w * d[j] for w, j in zip(wn, neg)) / sum(wn)
        total += math.log1p(math.exp(p - n))
    assert float(wrt_triplet_loss(x, y)) == pytest.approx(total / 6, rel=1e-4)


def test_msel_matches_its_formula():
    g = torch.Generator().manual_seed(2)
    vis, ir = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    total = 0.0
    for own, other in ((vis, ir), (ir, vis)):
        terms = []
        for i in range(6):
            same = [j for j in range(6) if y[j] == y[i]]
            intra = sorted(float((own[i] - own[j]).norm()) for j in same if j != i)[-2:]
            cross = [float((own[i] - other[j]).norm()) for j in same]
            terms.append((sum(cross) / 3 - sum(intra) / 2) ** 2)
        total += sum(terms) / 6
    assert float(msel_loss(vis, ir, y, num_pos=3)) == pytest.approx(total / 2, rel=1e-4)


# ---------------------------------------------------------------------------------- phases
def _image_batch(b: int = 6, views: int = 2):
    y = torch.tensor([0, 0, 3, 3, 5, 5])[:b]
    g = torch.Generator().manual_seed(3)
    return {
        "vis_images": torch.rand(b, views, 3, 64, 32, generator=g) * 255,
        "ir_images": torch.rand(b, 3, 64, 32, generator=g) * 255,
        "vis_targets": y,
        "ir_targets": y,
    }


def _phase_batch(model, phase: str):
    y = torch.tensor([0, 0, 3, 3, 5, 5])
    d = model.text_bank_visible.shape[1]
    if phase == "prompt":
        return {"vis_feats": torch.randn(6, d), "ir_feats": torch.randn(6, d), "targets": y}
    if phase == "fusion":
        with torch.no_grad():
            t_vis, t_ir = model.class_texts(torch.arange(model.num_classes))
        return {
            "feats": torch.randn(6, d),
            "targets": y,
            "class_text_vis": t_vis,
            "class_text_ir": t_ir,
        }
    return _image_batch()


@pytest.mark.parametrize("phase", PHASES)
def test_each_phase_batch_gives_the_phase_losses(phase):
    """A phase's batch gives exactly that phase's loss terms, all finite and differentiable into
    the phase's optimizer. Which parameters each phase trains is checked against a table written
    out by hand in test_csdn_phase_tables.py (not against ``phase_parameters``)."""
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg)
    model.train()
    optimizer = build_phase_optimizer(cfg, model, PHASES.index(phase))
    losses = model(_phase_batch(model, phase))
    expected = {
        "prompt": {"loss_mspl_i2t", "loss_mspl_t2i"},
        "fusion": {"loss_sii_i2t", "loss_sii_t2i"},
        "image": {"loss_id", "loss_triplet", "loss_msel", "loss_hse_vis", "loss_hse_ir"},
    }[phase]
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert any(p.grad is not None and bool(p.grad.any()) for p in params)
    with pytest.raises(KeyError, match="unknown CSDN phase 'mlm'"):
        next(model.phase_parameters("mlm"))
    if phase == "image":
        lrs = {g["group_name"]: g["lr"] for g in optimizer.param_groups}
        assert lrs["new/weight"] == pytest.approx(2 * lrs["pretrained/weight"])
        names = {n for g in optimizer.param_groups for n in g["param_names"]}
        assert "head_gem.pool.p" in names and not any(n.startswith("text_") for n in names)


def test_ablation_configs_and_text_targets():
    cfg = _cfg(
        "MODEL.CSDN.MSPL.ENABLED",
        "False",
        "MODEL.CSDN.SII.ENABLED",
        "False",
        "MODEL.CSDN.HSE.TEXT_TARGET",
        "shared",
        "MODEL.CSDN.HSE.NAME",
        "clipreid",
    )
    model = build_model(cfg).train()
    assert len(model.prompt_learners) == 1 and model.fusion is None
    t_vis, t_ir = model.text_targets(torch.tensor([1, 2]))
    assert torch.equal(t_vis, t_ir)
    assert set(model(_image_batch())) == {
        "loss_id",
        "loss_triplet",
        "loss_msel",
        "loss_clipreid_i2t",
    }
    assert PhasePlan(cfg).epochs[1] == 0  # no SII: no fusion phase


def test_phase_plan_and_schedules():
    cfg = _cfg(
        "MODEL.CSDN.PHASE1.EPOCHS",
        "10",
        "MODEL.CSDN.PHASE2.EPOCHS",
        "6",
        "SOLVER.MAX_EPOCH",
        "20",
        "SOLVER.STEPS",
        "[8]",
        "SOLVER.WARMUP_EPOCHS",
        "2.0",
        "SOLVER.WARMUP_FACTOR",
        "0.01",
        "MODEL.CSDN.PHASE2.WARMUP_EPOCHS",
        "2",
    )
    plan = PhasePlan(cfg)
    assert plan.starts == (0, 10, 16) and plan.total == 36
    assert [plan.phase_of(e) for e in (0, 9, 10, 15, 16, 35)] == [0, 0, 1, 1, 2, 2]
    # evaluation: every period of phase-3 epochs from its start, and after the last epoch
    assert [e for e in range(36) if plan.is_eval_epoch(e, 3)] == [18, 21, 24, 27, 30, 33, 35]
    assert [e for e in range(36) if plan.is_eval_epoch(e, 0)] == [35]
    timm = TimmCosineSchedule(3e-4, 60, 5, 1e-5, 1e-6)
    assert timm.factor(0) * 3e-4 == pytest.approx(1e-5)
    assert timm.factor(5) * 3e-4 == pytest.approx(
        1e-6 + 0.5 * (3e-4 - 1e-6) * (1 + math.cos(math.pi / 12))
    )
    assert timm.factor(60) * 3e-4 == pytest.approx(1e-6)
    sched = PhaseSchedule(cfg, plan)
    base = cfg.MODEL.CSDN.PHASE2.BASE_LR
    assert sched.factor(11) * base == pytest.approx(1e-5 + (base - 1e-5) / 2)  # phase-2 epoch 1
    assert sched.factor(16) == pytest.approx(0.01)  # phase-3 warm-up start
    assert sched.factor(16 + 9) == pytest.approx(0.1)  # after the step at phase-3 epoch 8


def test_inference_features_and_vit_variant():
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    batch = {"images": torch.rand(4, 3, 64, 32) * 255, "modality": torch.tensor([0, 1, 0, 1])}
    feats = model(batch)["image_feats"]
    gem, proj = model.head_gem.bn.num_features, model.head_proj.bn.num_features
    assert feats.shape == (4, 2 * (gem + proj))  # flip copy concatenated
    for part in torch.split(feats, [gem, proj, gem, proj], dim=1):
        torch.testing.assert_close(part.norm(dim=1), torch.ones(4))
    single = model({"images": batch["images"][1:2], "modality": torch.tensor([1])})["image_feats"]
    torch.testing.assert_close(single[0], feats[1], rtol=1e-4, atol=1e-5)  # per-modality stems
    with torch.no_grad():  # the infrared stem does not touch visible images
        for p in model.image_encoder.stems[1].parameters():
            p.add_(torch.randn_like(p))
    again = model(batch)["image_feats"]
    assert torch.equal(again[[0, 2]], feats[[0, 2]])
    assert not torch.allclose(again[[1, 3]], feats[[1, 3]], atol=1e-3)
    vit = build_model(
        _cfg(
            "MODEL.CLIP.NAME",
            "tiny-vit",
            "MODEL.CLIP.RN_LAST_STRIDE_1",
            "False",
            "MODEL.CSDN.TEST_FLIP",
            "False",
        )
    )
    assert vit.image_encoder.is_vit and vit.head_gem.pool is None
    assert vit.eval()(batch)["image_feats"].shape[1] == vit.head_gem.bn.num_features + proj
    assert set(vit.train()(_image_batch())) >= {"loss_id", "loss_hse_ir"}


def test_phase3_optimizer_gives_both_heads_twice_the_lr_biases_included():
    """The authors' phase-3 Adam: every parameter of the two classifier heads (GeM p, BN weight
    and bias, classifier) at 2 x 3e-4, the image encoder at 3e-4, weight decay 5e-4 throughout."""
    cfg = _cfg("SOLVER.BASE_LR", "3e-4")  # Base-CSDN.yml's (the demo trains faster)
    model = build_model(cfg)
    optimizer = build_phase_optimizer(cfg, model, PHASES.index("image"))
    got = {
        n: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for n in g["param_names"]
    }
    heads = {n: v for n, v in got.items() if n.startswith(("head_gem.", "head_proj."))}
    assert {"head_gem.bn.bias", "head_proj.bn.bias", "head_gem.classifier.weight"} <= set(heads)
    assert all(v == pytest.approx((6e-4, 5e-4)) for v in heads.values()), heads
    encoder = {n: v for n, v in got.items() if n.startswith("image_encoder.")}
    assert encoder and all(v == pytest.approx((3e-4, 5e-4)) for v in encoder.values())
    assert set(got) == set(heads) | set(encoder)
