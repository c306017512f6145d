"""CSDN's per-phase trainable sets, written out independently of ``_PHASE_MODULES``.

The expected sets come from the CSDN README / the authors' recipe, not from the table the model
reads: phase 1 (prompt) trains the visible and infrared prompt learners only, phase 2 (fusion)
the SII fusion only, phase 3 (image) the two-stream image encoder and both BN-classifier heads
(``head_gem``, ``head_proj``). The CLIP text encoder never trains. One optimizer step per phase
must change exactly the parameters under those prefixes, and no other.
"""

from __future__ import annotations

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


def _cfg():
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    cfg.merge_from_file(DEMO)
    cfg.merge_from_list(["DATALOADER.NUM_INSTANCE", "2"])
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


def _step(phase):
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg)
    model.train()
    optimizer = build_phase_optimizer(cfg, model, PHASE_INDEX[phase])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model(_phase_batch(model, phase))
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return model, optimizer, changed


@pytest.mark.parametrize("phase", ["prompt", "fusion", "image"])
def test_phase_step_changes_exactly_the_written_out_modules(phase):
    model, optimizer, changed = _step(phase)
    prefixes = EXPECTED_TRAINABLE_PREFIXES[phase]
    names = [n for n, _ in model.named_parameters()]
    expected = {n for n in names if n.startswith(prefixes)}
    # every expected prefix names real parameters (the table cannot silently go stale)
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in names), prefix
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimized = {n for g in optimizer.param_groups for n in g.get("param_names", [])}
    assert trainable == expected, (
        f"missing {sorted(expected - trainable)[:5]}, extra {sorted(trainable - expected)[:5]}"
    )
    assert optimized == expected
    assert changed <= expected, f"wrongly changed {sorted(changed - expected)[:5]}"
    # An expected parameter that did not move must have been in the graph with an exactly zero
    # gradient (the tiny RN50 trunk's bn1/bn2 biases get none), never a missing one.
    params = dict(model.named_parameters())
    for n in expected - changed:
        assert params[n].grad is not None and not params[n].grad.any(), n
    assert len(expected - changed) <= len(expected) // 5
    # every expected module (second-level name) actually moved; the text encoder never does
    for module in {".".join(n.split(".")[:2]) for n in expected}:
        assert any(n.startswith(module + ".") for n in changed), module
    assert not any(n.startswith(NEVER_TRAINED) for n in changed | trainable)
