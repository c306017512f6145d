"""Every documented ``MODEL.CSDN`` key, set to a non-default value and observed where it acts.

Keys of the model (built in-process on the tiny random-init CLIP ResNet): inside the built
modules, in the losses of a forward pass, or through a spy on the call that uses them. The loss
weights all get different values (their defaults coincide: ID, MSEL and CLIPREID are 1.0), so a
weight read from another key is caught as well as an ignored one. The keys read by the trainer
(phase epochs, batches, optimizers, schedules, SyncBatchNorm, bank modes) are in
test_csdn_config_keys_trainer.py; ``test_every_key_has_a_case_here`` keeps both lists complete.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
import torch
from fastreid.modeling.meta_arch import build_model
from torch import nn

import csdn.modeling.meta_arch as meta_arch
from csdn.banks import extract_text_bank
from csdn.phases import PhasePlan, build_phase_optimizer
from fastreid_ext.data.vi.base import INFRARED, VISIBLE
from fastreid_ext.text import ClipTokenizer

from .config_docs import leaf_keys
from .test_csdn_config_keys_trainer import TRAINER_KEYS
from .test_csdn_modules import _cfg, _image_batch, _phase_batch

# Loss weights: every one differs from its default and from every other.
WEIGHTS = {"ID.WEIGHT": 1.3, "TRIPLET.WEIGHT": 0.35, "MSEL.WEIGHT": 0.7, "HSE.VIS_WEIGHT": 0.45,
           "HSE.IR_WEIGHT": 0.25, "HSE.CLIPREID.WEIGHT": 0.6}  # fmt: skip
# the loss term each weight multiplies (the CLIPREID term exists under HSE.NAME clipreid only)
WEIGHTED_TERM = {"ID.WEIGHT": "loss_id", "TRIPLET.WEIGHT": "loss_triplet",
                 "MSEL.WEIGHT": "loss_msel", "HSE.VIS_WEIGHT": "loss_hse_vis",
                 "HSE.IR_WEIGHT": "loss_hse_ir", "HSE.CLIPREID.WEIGHT": "loss_clipreid_i2t"}  # fmt: skip
MODEL_KEYS = (
    "TEST_FLIP", "MSPL.ENABLED", "MSPL.TEMPLATE", "MSPL.INIT_STD", "SII.ENABLED", "SII.NAME",
    "SII.DROPOUT", "HSE.NAME", "HSE.TEXT_TARGET", "HSE.CLIPREID.LABEL_SMOOTHING", "MSEL.ENABLED",
    "DDP.GATHER_LOSS_FEATURES", "QUIRKS.STEM_SINGLE_RELU", *WEIGHTS,
)  # fmt: skip


def _opts(values: Dict[str, object]) -> List[str]:
    return [x for k, v in values.items() for x in (f"MODEL.CSDN.{k}", str(v))]


def _model(*opts: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(_cfg(*opts))


def _random_text_banks(*models: nn.Module) -> None:
    """The same random phase-3 text banks ``[N, D]`` in every model (instead of zeros)."""
    g = torch.Generator().manual_seed(11)
    n, d = models[0].text_bank_visible.shape
    banks = torch.randn(n, d, generator=g) / d**0.5, torch.randn(n, d, generator=g) / d**0.5
    for m in models:
        m.text_bank_visible.copy_(banks[0])
        m.text_bank_infrared.copy_(banks[1])


def test_every_key_has_a_case_here():
    """The cases of this file and of the trainer file together name every leaf key once."""
    keys = sorted(leaf_keys(_cfg().MODEL.CSDN))
    named = list(MODEL_KEYS) + list(TRAINER_KEYS)
    assert sorted(named) == keys


# ------------------------------------------------------------------ test features
@torch.no_grad()
@pytest.mark.parametrize("flip", [True, False])
def test_test_flip(flip):
    """``TEST_FLIP``: the test feature of each image, and of its horizontal flip when True."""
    model = _model("MODEL.CSDN.TEST_FLIP", str(flip)).eval()
    images = torch.rand(3, 3, 64, 32) * 255
    got = model({"images": images, "modality": torch.tensor([0, 0, 0])})["image_feats"]
    x = model._normalise(images)
    want = [model._test_feature(x, VISIBLE)] + ([model._test_feature(x.flip(3), VISIBLE)] * flip)
    torch.testing.assert_close(got, torch.cat(want, dim=1))


# ------------------------------------------------------------------ MsPL
@torch.no_grad()
@pytest.mark.parametrize("enabled, sii", [(True, True), (True, False), (False, False)])
def test_mspl_enabled(enabled, sii):
    """``MSPL.ENABLED``: two prompt learners (visible, infrared texts differ) or one shared one
    (equal texts), and phase 1 trains exactly those learners -- with SII on or off."""
    target = "fused" if sii else ("modality" if enabled else "shared")
    cfg = _cfg("MODEL.CSDN.MSPL.ENABLED", str(enabled), "MODEL.CSDN.SII.ENABLED", str(sii),
               "MODEL.CSDN.HSE.TEXT_TARGET", target)  # fmt: skip
    model = build_model(cfg)
    assert len(model.prompt_learners) == (2 if enabled else 1)
    t_vis, t_ir = model.class_texts(torch.tensor([0, 4]))
    assert torch.equal(t_vis, t_ir) is not enabled
    optimizer = build_phase_optimizer(cfg, model, 0)
    names = {n for g in optimizer.param_groups for n in g["param_names"]}
    learners = ["prompt_learners.0.cls_ctx", "prompt_learners.1.cls_ctx"]
    assert names == set(learners[: 2 if enabled else 1])


@torch.no_grad()
def test_mspl_template():
    """``MSPL.TEMPLATE``: both learners' prompts are the template's token embeddings up to EOT,
    with one identity token per "X" at the placeholders' positions."""
    template = "A X X person."  # 2 tokens at positions 2-3 (default: 4 at positions 5-8)
    model = _model("MODEL.CSDN.MSPL.TEMPLATE", template)
    ids = ClipTokenizer(77).encode(template)
    length = int(ids.argmax()) + 1  # SOT a X X person . EOT
    assert length == 7
    want = model.text_encoder.token_embedding(ids[:length]).float()
    labels = torch.tensor([1, 4])
    for learner in model.prompt_learners:
        prompts, eot = learner(labels)
        assert prompts.shape[:2] == (2, length) and eot.tolist() == [length - 1] * 2
        torch.testing.assert_close(prompts[:, :2], want[None, :2].expand(2, -1, -1))
        torch.testing.assert_close(prompts[:, 4:], want[None, 4:].expand(2, -1, -1))
        assert torch.equal(prompts[:, 2:4], learner.cls_ctx[labels])


@torch.no_grad()
def test_mspl_init_std():
    """``MSPL.INIT_STD``: the identity tokens of both learners are N(0, INIT_STD^2): the same
    draws as the default's, scaled by INIT_STD / 0.02."""
    default, scaled = _model(), _model("MODEL.CSDN.MSPL.INIT_STD", "0.5")
    for a, b in zip(default.prompt_learners, scaled.prompt_learners):
        torch.testing.assert_close(b.cls_ctx, a.cls_ctx * (0.5 / 0.02), rtol=1e-5, atol=0)
        assert float(b.cls_ctx.std()) == pytest.approx(0.5, rel=0.1)


# ------------------------------------------------------------------ SII
@pytest.mark.parametrize("enabled", [True, False])
def test_sii_enabled(enabled):
    """``SII.ENABLED``: the fusion module exists and phase 2 runs its epochs, or neither."""
    cfg = _cfg("MODEL.CSDN.SII.ENABLED", str(enabled), "MODEL.CSDN.PHASE2.EPOCHS", "7",
               *([] if enabled else ["MODEL.CSDN.HSE.TEXT_TARGET", "modality"]))  # fmt: skip
    model = build_model(cfg)
    assert (model.fusion is not None) is enabled
    plan = PhasePlan(cfg)
    assert plan.epochs[1] == (7 if enabled else 0)
    assert [plan.phase_of(e) for e in range(plan.total)].count(1) == (7 if enabled else 0)


def test_sii_name():
    """``SII.NAME``: "two_key" attends over both texts (two weights per row, the query trains);
    "single_key" over the infrared text only (one weight, the query gets no gradient)."""
    for name, sources in (("two_key", 2), ("single_key", 1)):
        model = _model("MODEL.CSDN.SII.NAME", name, "MODEL.CSDN.SII.DROPOUT", "0.0")
        t_vis, t_ir = torch.randn(5, 64) * 3, torch.randn(5, 64) * 3
        assert model.fusion.attention(t_vis, t_ir).shape == (5, sources)
        model.fusion(t_vis, t_ir).sum().backward()
        assert bool(model.fusion.query[0].weight.grad.any()) is (sources == 2)


def test_sii_dropout():
    """``SII.DROPOUT``: the rate of the dropout after each of SII's three tanh projections."""
    rates = [m.p for m in _model("MODEL.CSDN.SII.DROPOUT", "0.2").fusion.modules()
             if isinstance(m, nn.Dropout)]  # fmt: skip
    assert rates == [0.2, 0.2, 0.2]


# ------------------------------------------------------------------ HSE and the phase-3 losses
@pytest.mark.parametrize("name", ["hse", "clipreid"])
def test_hse_name(name):
    """``HSE.NAME``: the image-to-text terms of a phase-3 forward."""
    model = _model("MODEL.CSDN.HSE.NAME", name).train()
    i2t = {"hse": {"loss_hse_vis", "loss_hse_ir"}, "clipreid": {"loss_clipreid_i2t"}}[name]
    assert set(model(_image_batch())) == {"loss_id", "loss_triplet", "loss_msel"} | i2t


@torch.no_grad()
@pytest.mark.parametrize("target", ["fused", "modality", "shared"])
def test_hse_text_target(target):
    """``HSE.TEXT_TARGET``: the phase-3 text banks are the SII output of each class (the same
    for both modalities), each modality's own prompt texts, or the one shared prompt's."""
    extra = {
        "fused": [],
        "modality": [],
        "shared": ["MODEL.CSDN.MSPL.ENABLED", "False", "MODEL.CSDN.SII.ENABLED", "False"],
    }
    model = _model("MODEL.CSDN.HSE.TEXT_TARGET", target, *extra[target]).eval()
    labels = torch.arange(model.num_classes)
    bank_vis, bank_ir = extract_text_bank(model, 4, fusion_train_mode=False)
    t_vis, t_ir = model.class_texts(labels)
    if target == "fused":
        want = (model.fusion(t_vis, t_ir),) * 2
    else:
        want = (t_vis, t_ir)
        assert torch.equal(t_vis, t_ir) is (target == "shared")
    torch.testing.assert_close(bank_vis, want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bank_ir, want[1], rtol=1e-5, atol=1e-6)
    if target == "fused":  # the fused text is not the visible prompt's
        assert float((bank_vis - t_vis).abs().max()) > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("key", list(WEIGHTS))
def test_loss_weight(key):
    """Each loss weight multiplies its own term of a phase-3 forward: against the same model with
    every weight 1, the term's ratio is the key's value (the six values all differ)."""
    name = ["MODEL.CSDN.HSE.NAME", "clipreid" if key.startswith("HSE.CLIPREID") else "hse"]
    ones = _model(*name, *_opts({k: 1.0 for k in WEIGHTS})).train()
    weighted = _model(*name, *_opts(WEIGHTS)).train()
    _random_text_banks(ones, weighted)
    base, got = ones(_image_batch()), weighted(_image_batch())
    term = WEIGHTED_TERM[key]
    assert float(base[term]) > 1e-4
    assert float(got[term] / base[term]) == pytest.approx(WEIGHTS[key], rel=1e-5)


@torch.no_grad()
def test_hse_clipreid_label_smoothing():
    """``HSE.CLIPREID.LABEL_SMOOTHING``: the CLIP-ReID image-to-text CE of a forward, written
    out: ``-(1 - s) log p_y - s / N sum_j log p_j`` over every image against the text banks."""
    s, w = 0.3, 0.6
    model = _model("MODEL.CSDN.HSE.NAME", "clipreid", "MODEL.CSDN.HSE.CLIPREID.WEIGHT", str(w),
                   "MODEL.CSDN.HSE.CLIPREID.LABEL_SMOOTHING", str(s)).train()  # fmt: skip
    _random_text_banks(model)
    seen = {}
    model.image_encoder.register_forward_hook(lambda m, i, out: seen.update(f_p=out.proj_feat))
    batch = _image_batch()
    got = model(batch)["loss_clipreid_i2t"]
    f_p, y, b = seen["f_p"], batch["vis_targets"], len(batch["vis_targets"])
    logits = torch.cat([f_p[: 2 * b] @ model.text_bank_visible.t(),
                        f_p[2 * b :] @ model.text_bank_infrared.t()])  # fmt: skip
    log_p = logits.log_softmax(dim=1)
    labels = torch.cat([y, y, y])
    per_image = -(1 - s) * log_p[torch.arange(3 * b), labels] - s * log_p.mean(dim=1)
    torch.testing.assert_close(got, w * per_image.mean(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("enabled", [True, False])
def test_msel_enabled(enabled):
    """``MSEL.ENABLED``: the MSEL term is in a phase-3 forward or not; nothing else changes."""
    on = _model().train()
    model = _model("MODEL.CSDN.MSEL.ENABLED", str(enabled)).train()
    want, got = on(_image_batch()), model(_image_batch())
    assert ("loss_msel" in got) is enabled
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)


# ------------------------------------------------------------------ distributed and quirks
def _spy_gather(monkeypatch) -> List[Tuple[Tuple[int, ...], int]]:
    calls: List[Tuple[Tuple[int, ...], int]] = []

    def spy(x: torch.Tensor, blocks: int = 1) -> torch.Tensor:
        calls.append((tuple(x.shape), blocks))
        return x  # one process: the gathered rows are this rank's

    monkeypatch.setattr(meta_arch, "all_gather_rows", spy)
    return calls


@torch.no_grad()
@pytest.mark.parametrize("gather", [True, False])
def test_ddp_gather_loss_features(monkeypatch, gather):
    """``DDP.GATHER_LOSS_FEATURES``: the batch-pool losses' rows go through the all-gather (phase
    3: f_g, f_p and labels in blocks of the 2 views + infrared; phase 1: v, r, both texts and
    labels) or never do."""
    calls = _spy_gather(monkeypatch)
    model = _model("MODEL.CSDN.DDP.GATHER_LOSS_FEATURES", str(gather)).train()
    model(_image_batch())
    gem, proj = model.head_gem.bn.num_features, model.head_proj.bn.num_features
    image = [((18, gem), 3), ((18, proj), 3), ((18,), 3)]  # 6 pairs x (2 views + infrared)
    assert calls == (image if gather else [])
    calls.clear()
    model(_phase_batch(model, "prompt"))
    assert calls == ([((6, proj), 1)] * 4 + [((6,), 1)] if gather else [])


@pytest.mark.parametrize("single_relu", [True, False])
def test_quirks_stem_single_relu(single_relu):
    """``QUIRKS.STEM_SINGLE_RELU``: both stems are conv-BN x 3 with one ReLU (after the third
    BN), or CLIP's stem with a ReLU after every BN; then the 2 x 2 average pool."""
    model = _model("MODEL.CSDN.QUIRKS.STEM_SINGLE_RELU", str(single_relu))
    conv_bn = [nn.Conv2d, nn.BatchNorm2d]
    layers = conv_bn * 3 + [nn.ReLU] if single_relu else (conv_bn + [nn.ReLU]) * 3
    for stem in model.image_encoder.stems:
        assert [type(m) for m in stem] == layers + [nn.AvgPool2d]
    x = torch.rand(2, 3, 64, 32)
    stem = model.image_encoder.stems[INFRARED].eval()
    # conv-BN-conv (single ReLU) passes negative values on; conv-BN-ReLU (CLIP) does not
    assert bool((stem[:3](x) < 0).any()) is single_relu
