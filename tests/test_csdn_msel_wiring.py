"""MSEL compares each image with the other ``DATALOADER.NUM_INSTANCE - 1`` images of its identity
in the batch: the value the sampler uses must reach ``msel_loss`` (a hard-coded K equal to the
default would pass every test run at the default)."""

from __future__ import annotations

import pytest
import torch
from fastreid.modeling.meta_arch import build_model

import csdn.modeling.meta_arch as csdn_meta_arch
from csdn.modeling.losses import msel_loss

from .test_csdn_modules import _cfg


@pytest.mark.parametrize("num_instance", [3, 4])
def test_msel_uses_the_sampler_num_instance(monkeypatch, num_instance):
    torch.manual_seed(0)
    model = build_model(_cfg("DATALOADER.NUM_INSTANCE", str(num_instance))).eval()
    seen = []

    def spy(anchors, others, labels, num_pos):
        seen.append((num_pos, labels.tolist()))
        return msel_loss(anchors, others, labels, num_pos)

    monkeypatch.setattr(csdn_meta_arch, "msel_loss", spy)
    y = torch.tensor([0, 3]).repeat_interleave(num_instance)  # the P x K sampler's layout
    g = torch.Generator().manual_seed(3)
    batch = {
        "vis_images": torch.rand(len(y), 2, 3, 64, 32, generator=g) * 255,
        "ir_images": torch.rand(len(y), 3, 64, 32, generator=g) * 255,
        "vis_targets": y,
        "ir_targets": y,
    }
    with torch.no_grad():
        losses = model.image_losses(batch)
    assert torch.isfinite(losses["loss_msel"])
    # two calls (GeM feature, projected feature), each with K and the K-per-identity labels
    assert seen == [(num_instance, y.tolist())] * 2
