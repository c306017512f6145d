"""The cross-modal identity sampler (identities, modality pairing, determinism, rank shards)
and the CAJ channel augmentations in normalised space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastreid_ext.data.vi import (
    INFRARED,
    VISIBLE,
    ChannelAdapGray,
    ChannelExchange,
    ChannelRandomErasing,
    CrossModalIdentitySampler,
    build_vi_transforms,
)

from .test_vi_data import _cfg


# ---------------------------------------------------------------------------------- sampler
def test_sampler_identities_modalities_determinism_and_length():
    vis = [i % 6 for i in range(30)]  # 6 labels, 5 visible images each
    ir = [i % 6 for i in range(18)] + [9]  # label 9 has no visible image
    s = CrossModalIdentitySampler(vis, ir, num_identities=3, num_instances=2, seed=5)
    assert len(s) == 30 // 6 + 1
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert len(b) == 6
        ids = [vis[v] for v, _ in b]
        assert all(vis[v] == ir[r] for v, r in b)  # same identity in both modalities
        assert ids[0::2] == ids[1::2] and len(set(ids)) == 3  # P ids x K consecutive pairs
    assert list(s) == batches
    s.set_epoch(1)
    assert list(s) != batches


def test_sampler_rank_shards_keep_identities_whole():
    vis, ir = [i % 8 for i in range(40)], [i % 8 for i in range(24)]
    full = CrossModalIdentitySampler(vis, ir, 4, 3, seed=1)
    ranks = [CrossModalIdentitySampler(vis, ir, 4, 3, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in [full] + ranks:
        s.set_epoch(2)
    for whole, a, b in zip(full, *ranks):
        assert a + b == whole and len(a) == len(b) == 6
        assert not {vis[v] for v, _ in a} & {vis[v] for v, _ in b}
    with pytest.raises(ValueError, match="divisible by the world size"):
        CrossModalIdentitySampler(vis, ir, 3, 2, world_size=2)
    with pytest.raises(ValueError, match="only 8 labels"):
        CrossModalIdentitySampler(vis, ir, 9, 2)


# ---------------------------------------------------------------------------------- transforms
MEAN, STD = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)


def _normalised(x):
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def test_channel_exchange_and_adaptive_gray_act_in_normalised_space():
    img = torch.rand(3, 8, 4) * 255
    z = _normalised(img)
    gray = 0.2989 * z[0] + 0.5870 * z[1] + 0.1140 * z[2]
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        out = _normalised(ChannelExchange(2, MEAN, STD)(img))
        c = next(c for c in range(3) if torch.allclose(out[0], z[c], atol=1e-4))
        assert all(torch.allclose(out[k], z[c], atol=1e-4) for k in range(3))
        seen.add(c)
    assert seen == {0, 1, 2}
    torch.manual_seed(1)
    outs = [_normalised(ChannelExchange(3, MEAN, STD)(img)) for _ in range(40)]
    assert any(torch.allclose(o[1], gray, atol=1e-4) for o in outs)
    keep = [ChannelAdapGray(0.0, MEAN, STD)(img) for _ in range(40)]
    assert any(torch.equal(o, img) for o in keep)  # branch 3 with p = 0 keeps the image
    assert not any(torch.allclose(_normalised(o)[0], gray, atol=1e-4) for o in keep)
    always = [_normalised(ChannelAdapGray(1.0, MEAN, STD)(img)) for _ in range(40)]
    assert any(torch.allclose(o[2], gray, atol=1e-4) for o in always)


def test_channel_random_erasing_fills_a_rectangle_with_the_normalised_value():
    img = torch.full((3, 40, 20), 7.0)
    torch.manual_seed(0)
    op = ChannelRandomErasing(1.0, (0.1, 0.2), 0.5, (0.4914, 0.4822, 0.4465), MEAN, STD)
    out = op(img)
    changed = (out != img).any(0)
    rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
    h, w = len(rows), len(cols)
    assert changed.sum() == h * w and 0.05 * 800 <= h * w <= 0.25 * 800  # one rectangle
    np.testing.assert_allclose(
        _normalised(out)[:, changed][:, 0], [0.4914, 0.4822, 0.4465], atol=1e-5
    )
    assert torch.equal(ChannelRandomErasing(0.0)(img), img)


def test_channel_exchange_accepts_any_gray_value_as_caj():
    img = torch.rand(3, 8, 4) * 255
    z = _normalised(img)
    gray = 0.2989 * z[0] + 0.5870 * z[1] + 0.1140 * z[2]
    torch.manual_seed(2)
    outs = [_normalised(ChannelExchange(9, MEAN, STD)(img)) for _ in range(60)]
    n_gray = sum(bool(torch.allclose(o[0], gray, atol=1e-4)) for o in outs)
    assert 30 <= n_gray < 60  # idx >= 3 (7 of 10 values) gives the gray image
    with pytest.raises(ValueError, match="EXCHANGE_GRAY"):
        ChannelExchange(-1)


def test_vi_transform_pipelines_from_config():
    cfg = _cfg(
        "unused-root",
        INPUT__VI__VISIBLE_AUG_VIEWS=[
            ["ChannelRandomErasing"],
            ["ChannelRandomErasing", "ChannelExchange"],
        ],
        INPUT__VI__INFRARED_AUG=["ChannelRandomErasing", "ChannelAdapGray"],
    )
    names = [type(t).__name__ for t in build_vi_transforms(cfg, True, VISIBLE, 1).transforms]
    assert names[-2:] == ["ChannelRandomErasing", "ChannelExchange"]
    assert (
        type(build_vi_transforms(cfg, True, INFRARED).transforms[-1]).__name__ == "ChannelAdapGray"
    )
    assert len(build_vi_transforms(cfg, False).transforms) == 2
    cfg.INPUT.VI.INFRARED_AUG = ["ChannelShuffle"]
    with pytest.raises(KeyError, match="INPUT.VI.INFRARED_AUG"):
        build_vi_transforms(cfg, True, INFRARED)
