"""Propot's initial prototypes (eq. 1): per-identity sums of the encoder outputs, the on-disk
cache (reloaded without recomputing), the hook's sources, and the missing-hook error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fastreid.modeling.meta_arch import build_model

import propot.initial_prototypes as ip
from fastreid_ext.data.text_image import load_text_image_dataset, read_image
from fastreid_ext.data.transforms import build_image_transforms
from fastreid_ext.engine import build_cfg
from fastreid_ext.text import ClipTokenizer
from propot import PropotInitialPrototypeHook

from .conftest import REPO, tiny_opts

DEMO = str(REPO / "configs" / "Propot" / "demo.yml")
NUM_IDS = 24  # training identities of the session's synthetic_root


def propot_cfg(root: str, out: str, *opts: str):
    return build_cfg(DEMO, tiny_opts(root, out) + ["MODEL.HEADS.NUM_CLASSES", str(NUM_IDS), *opts])


def direct_sums(model, pairs, cfg, per_image: bool = False):
    """Per-identity sums of each pair's features, encoded one batch at a time without the
    extraction helper, accumulated in a Python loop."""
    transform = build_image_transforms(cfg, is_train=False)
    model.eval()
    with torch.no_grad():
        img = model({"images": torch.stack([transform(read_image(p.img_path)) for p in pairs])})
        txt = model({"caption_ids": ClipTokenizer()([p.caption for p in pairs])})
    model.train()
    dim = img["image_feats"].shape[1]
    pt_v, pt_t = torch.zeros(NUM_IDS, dim), torch.zeros(NUM_IDS, dim)
    seen = set()
    for k, p in enumerate(pairs):
        if not per_image or p.image_id not in seen:
            pt_v[p.pid] += img["image_feats"][k]
        seen.add(p.image_id)
        pt_t[p.pid] += txt["text_feats"][k]
    return pt_v, pt_t


def test_initial_prototypes_are_identity_sums_and_cached(synthetic_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = propot_cfg(
        synthetic_root, str(tmp_path / "out"), "MODEL.PROPOT.INIT.CACHE_DIR", str(cache)
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    pairs = load_text_image_dataset("CUHKPEDES", cfg).train
    labels = [p.pid for p in pairs]
    calls = []
    real = ip.extract_pair_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ip, "extract_pair_features", counting)
    pt_v, pt_t, source = ip.load_or_compute_initial_prototypes(model, pairs, labels, NUM_IDS, cfg)
    assert source == "computed" and len(calls) == 1
    ref_v, ref_t = direct_sums(model, pairs, cfg)
    assert pt_v.shape == (NUM_IDS, 64)
    assert torch.allclose(pt_v, ref_v, atol=1e-4) and torch.allclose(pt_t, ref_t, atol=1e-4)
    files = list(cache.glob("propot_initial_prototypes_*.pt"))
    assert len(files) == 1

    # a restart finds the cache: no extraction, the same tensors
    again_v, again_t, source = ip.load_or_compute_initial_prototypes(
        model, pairs, labels, NUM_IDS, cfg
    )
    assert source == "cache" and len(calls) == 1
    assert torch.equal(again_v, pt_v) and torch.equal(again_t, pt_t)

    # other inputs -> another key: different pairs, other weights, other counting
    ip.load_or_compute_initial_prototypes(model, pairs[:-2], labels[:-2], NUM_IDS, cfg)
    assert len(calls) == 2
    other = build_model(cfg)  # different random weights
    ip.load_or_compute_initial_prototypes(other, pairs, labels, NUM_IDS, cfg)
    assert len(calls) == 3
    cfg_img = propot_cfg(
        synthetic_root,
        str(tmp_path / "out"),
        "MODEL.PROPOT.INIT.CACHE_DIR",
        str(cache),
        "MODEL.PROPOT.INIT.IMAGE_COUNT",
        "image",
    )
    img_v, img_t, source = ip.load_or_compute_initial_prototypes(
        model, pairs, labels, NUM_IDS, cfg_img
    )
    assert source == "computed" and len(calls) == 4
    per_image_v, _ = direct_sums(model, pairs, cfg, per_image=True)
    assert torch.allclose(img_v, per_image_v, atol=1e-4) and torch.equal(img_t, pt_t)
    assert torch.allclose(img_v * 2, pt_v, atol=1e-4)  # every synthetic image has 2 captions
    assert len(list(cache.glob("propot_initial_prototypes_*.pt"))) == 4

    # a corrupt cache file is ignored and rewritten
    files[0].write_bytes(b"not a checkpoint")
    _, _, source = ip.load_or_compute_initial_prototypes(model, pairs, labels, NUM_IDS, cfg)
    assert source == "computed" and len(calls) == 5


def test_normalisation_options_follow_eq_1():
    feats_v = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    feats_t = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    pt_v, pt_t = ip.initial_prototypes_from_features(feats_v, feats_t, labels, 3)
    assert torch.equal(pt_v, torch.tensor([[0.0, 2.0], [4.0, 4.0], [0.0, 0.0]]))
    assert torch.equal(pt_t, torch.tensor([[1.0, 1.0], [2.0, 1.0], [0.0, 0.0]]))
    inst_v, _ = ip.initial_prototypes_from_features(feats_v, feats_t, labels, 3, instance_norm=True)
    assert torch.allclose(inst_v[1], torch.tensor([0.6 + 1.0, 0.8]))
    norm_v, _ = ip.initial_prototypes_from_features(
        feats_v, feats_t, labels, 3, prototype_norm=True
    )
    assert torch.allclose(norm_v[1], torch.tensor([2**-0.5, 2**-0.5]))
    assert torch.equal(norm_v[2], torch.zeros(2))  # no instance: stays 0
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        ip.initial_prototypes_from_features(feats_v, feats_t, labels, 1)
    with pytest.raises(KeyError, match="IMAGE_COUNT"):
        ip.initial_prototypes_from_features(feats_v, feats_t, labels, 3, image_count="caption")


def test_hook_sources_and_missing_hook_error(synthetic_root, tmp_path):
    cfg = propot_cfg(synthetic_root, str(tmp_path / "out"))
    model = build_model(cfg)
    batch = {
        "images": torch.rand(4, 3, 64, 32) * 255,
        "caption_ids": ClipTokenizer()(["a man in red"] * 4),
        "targets": torch.tensor([0, 0, 1, 2]),
    }
    with pytest.raises(RuntimeError, match="PropotInitialPrototypeHook"):
        model(batch)
    from fastreid_ext.engine.trainer import ExtTrainer

    train_set = ExtTrainer.build_train_set(cfg)
    hook = PropotInitialPrototypeHook(cfg, None)
    hook.trainer = SimpleNamespace(model=model, train_set=train_set)
    hook.before_train()
    assert hook.source == "computed" and bool(model.prototypes.initialized)
    losses = model(batch)
    assert set(losses) == {"loss_sdm", "loss_id", "loss_p2i"} and torch.isfinite(losses["loss_p2i"])
    hook.before_train()  # initialised already (as after loading a checkpoint): nothing to do
    assert hook.source == "checkpoint"
    fresh = build_model(cfg)
    fresh.backbone.load_state_dict(model.backbone.state_dict())
    hook.trainer = SimpleNamespace(model=fresh, train_set=train_set)
    hook.before_train()
    assert hook.source == "cache"
    assert torch.equal(fresh.prototypes.initial_v, model.prototypes.initial_v)
    off = build_model(
        propot_cfg(synthetic_root, str(tmp_path / "o2"), "MODEL.PROPOT.ENABLED", "False")
    )
    hook.trainer = SimpleNamespace(model=off, train_set=train_set)
    hook.before_train()
    assert hook.source == "disabled" and not hasattr(off, "prototypes")
