"""CSDN's per-phase trainable sets, written out independently of ``_PHASE_MODULES``.

The expected sets come from the CSDN README / the authors' recipe, not from the table the model
reads: phase 1 (prompt) trains the visible and infrared prompt learners only, phase 2 (fusion)
the SII fusion only, phase 3 (image) the two-stream image encoder and both BN-classifier heads
(``head_gem``, ``head_proj``). The CLIP text encoder never trains.

Weight decay is 0 here, so Adam moves a parameter exactly when its gradient is non-zero: one
optimizer step must change exactly the phase's parameters minus those that have an exactly zero
gradient by design (``ZERO_GRADIENT_AT_INIT``, each with its reason), and no other parameter.
"""

from __future__ import annotations

import re

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

import csdn  # noqa: F401  (registers CSDN, its trainer and config keys)
from csdn.phases import build_phase_optimizer
from fastreid_ext.config import add_fastreid_ext_config, apply_config_extensions

from .conftest import REPO
from .test_csdn_modules import _phase_batch

DEMO = str(REPO / "configs" / "CSDN" / "demo.yml")
NO_WEIGHT_DECAY = ["MODEL.CSDN.PHASE1.WEIGHT_DECAY", "0.0", "MODEL.CSDN.PHASE2.WEIGHT_DECAY", "0.0",
                   "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.WEIGHT_DECAY_BIAS", "0.0"]  # fmt: skip


def _cfg(*opts: str):
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    cfg.merge_from_file(DEMO)
    cfg.merge_from_list(["DATALOADER.NUM_INSTANCE", "2", *NO_WEIGHT_DECAY, *opts])
    cfg.MODEL.HEADS.NUM_CLASSES = 6
    return cfg


# Written out by hand (README "Modules" table, third column), NOT read from the model.
EXPECTED_TRAINABLE_PREFIXES = {
    "prompt": ("prompt_learners.",),
    "fusion": ("fusion.",),
    "image": ("image_encoder.", "head_gem.", "head_proj."),
}
PHASE_INDEX = {"prompt": 0, "fusion": 1, "image": 2}
NEVER_TRAINED = ("text_encoder.",)
# Trainable parameters whose gradient is exactly zero at the first step, and why:
# * fusion, SII.NAME single_key (the authors' form): the softmax over a single key is 1, so the
#   query and key projections W_q, W_k never get a gradient (README, quirks table).
# * image, random-init CLIP ResNet (the tiny-rn of the tests): CLIP's ModifiedResNet initialises
#   the bn3.weight of every Bottleneck to zero (open_clip ``ModifiedResNet.init_parameters``, as
#   OpenAI's ``initialize_parameters``: zero-init residual branches). A branch then outputs the
#   constant bn3.bias whatever its input, so nothing upstream of bn3 in the branch (conv1, bn1,
#   conv2, bn2, conv3) gets a gradient until bn3.weight has moved off zero (the first step moves
#   it; pretrained CLIP weights have trained, non-zero ones). Not a bug of the stem quirk: the stems' BN
#   parameters get gradients with either QUIRKS.STEM_SINGLE_RELU (with the quirk, a shift by the
#   stem's bn1 / bn2 bias passes a linear conv into the next train-mode BN, which removes it
#   except at the conv's zero-padded border, so those two biases train through the border
#   only). With the default weight decay those parameters still moved at the
#   first step through Adam's L2 term -- except the BN biases (zero at init), which is how the
#   trunk's bn1.bias / bn2.bias showed up as "unchanged".
TRUNK_BRANCHES = r"image_encoder\.trunk\.\d+\.\d+\.(conv1|bn1|conv2|bn2|conv3)\."
# case -> (phase, config overrides, the parameters with a zero first-step gradient)
ZERO_GRADIENT_AT_INIT = {
    "prompt": ("prompt", [], None),
    "fusion-single_key": (
        "fusion",
        ["MODEL.CSDN.SII.NAME", "single_key"],
        r"fusion\.(query|key)\.",
    ),
    "fusion-two_key": ("fusion", ["MODEL.CSDN.SII.NAME", "two_key"], None),
    "image": ("image", [], TRUNK_BRANCHES),
    "image-clip_stem": ("image", ["MODEL.CSDN.QUIRKS.STEM_SINGLE_RELU", "False"], TRUNK_BRANCHES),
}


def _step(model, optimizer, phase):
    """One forward/backward/step; the gradients of the step."""
    losses = model(_phase_batch(model, phase))
    optimizer.zero_grad()
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return grads


@pytest.mark.parametrize("case", list(ZERO_GRADIENT_AT_INIT))
def test_phase_step_changes_exactly_the_written_out_modules(case):
    phase, opts, pattern = ZERO_GRADIENT_AT_INIT[case]
    torch.manual_seed(0)
    cfg = _cfg(*opts)
    model = build_model(cfg).train()
    optimizer = build_phase_optimizer(cfg, model, PHASE_INDEX[phase])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = list(initial)
    prefixes = EXPECTED_TRAINABLE_PREFIXES[phase]
    expected = {n for n in names if n.startswith(prefixes)}
    for prefix in prefixes:  # every expected prefix names real parameters
        assert any(n.startswith(prefix) for n in names), prefix
    zero = {n for n in names if pattern and re.match(pattern, n)}
    assert zero <= expected and len(zero) < len(expected)
    if phase == "image":  # the reason: every trunk bottleneck's bn3.weight starts at zero
        bn3 = [n for n in names if re.match(r"image_encoder\.trunk\.\d+\.\d+\.bn3\.weight", n)]
        assert len(bn3) == 4 and not any(initial[n].any() for n in bn3)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimized = {n for g in optimizer.param_groups for n in g.get("param_names", [])}
    assert trainable == expected, (
        f"missing {sorted(expected - trainable)[:5]}, extra {sorted(trainable - expected)[:5]}"
    )
    assert optimized == expected
    grads = _step(model, optimizer, phase)
    assert set(grads) == expected  # in the graph, and nothing else gets a gradient
    assert {n for n in expected if not grads[n].any()} == zero
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, initial[n])}
    assert changed == expected - zero, (
        f"unchanged {sorted(expected - zero - changed)[:5]}, wrongly changed "
        f"{sorted(changed - (expected - zero))[:5]}"
    )
    if phase == "image":  # once bn3.weight has moved, every phase-3 parameter trains
        grads = _step(model, optimizer, phase)
        assert not [n for n in expected if not grads[n].any()]
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, initial[n])}
        assert changed == expected
    assert not any(n.startswith(NEVER_TRAINED) for n in changed | trainable)
