"""Propot's initial prototypes (eq. 1): per-identity sums of the encoder outputs at the training
resolution, the on-disk cache (reloaded without recomputing, keyed by the data content), the
hook's sources, checkpoints made for other data, and the missing-hook error."""

from __future__ import annotations

import dataclasses
import logging
import time
from types import SimpleNamespace

import pytest
import torch
from fastreid.modeling.meta_arch import build_model

import propot.initial_prototypes as ip
from fastreid_ext.data.datasets.base import TrainPair
from fastreid_ext.data.text_image import load_text_image_dataset, read_image
from fastreid_ext.data.transforms import build_image_transforms
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.checkpoint import ExtCheckpointer
from fastreid_ext.engine.feature_extraction import extract_pair_features
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

    # other inputs -> another key: different pairs, same number of pairs with one caption
    # changed, other weights, other counting
    ip.load_or_compute_initial_prototypes(model, pairs[:-2], labels[:-2], NUM_IDS, cfg)
    assert len(calls) == 2
    edited = [dataclasses.replace(pairs[0], caption=pairs[0].caption + " and a hat"), *pairs[1:]]
    ip.load_or_compute_initial_prototypes(model, edited, labels, NUM_IDS, cfg)
    assert len(calls) == 3
    other = build_model(cfg)  # different random weights
    ip.load_or_compute_initial_prototypes(other, pairs, labels, NUM_IDS, cfg)
    assert len(calls) == 4
    cfg_img = propot_cfg(
        synthetic_root,
        str(tmp_path / "out"),
        "MODEL.PROPOT.INIT.CACHE_DIR",
        str(cache),
        "MODEL.PROPOT.INIT.IMAGE_SUM_OVER",
        "image",
    )
    img_v, img_t, source = ip.load_or_compute_initial_prototypes(
        model, pairs, labels, NUM_IDS, cfg_img
    )
    assert source == "computed" and len(calls) == 5
    per_image_v, _ = direct_sums(model, pairs, cfg, per_image=True)
    assert torch.allclose(img_v, per_image_v, atol=1e-4) and torch.equal(img_t, pt_t)
    assert torch.allclose(img_v * 2, pt_v, atol=1e-4)  # every synthetic image has 2 captions
    assert len(list(cache.glob("propot_initial_prototypes_*.pt"))) == 5

    # a corrupt cache file is ignored and rewritten
    files[0].write_bytes(b"not a checkpoint")
    _, _, source = ip.load_or_compute_initial_prototypes(model, pairs, labels, NUM_IDS, cfg)
    assert source == "computed" and len(calls) == 6


def test_extraction_batch_does_not_change_the_prototypes(synthetic_root, tmp_path, monkeypatch):
    """MODEL.PROPOT.INIT.IMS_PER_BATCH (total over all processes) sets the extraction batch;
    the prototypes do not depend on it."""
    out = str(tmp_path / "out")
    batch_sizes = []
    real = ip.extract_pair_features

    def recording(*args, **kwargs):
        batch_sizes.append(kwargs["batch_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ip, "extract_pair_features", recording)
    results = []
    for ims in ("0", "5"):
        cfg = propot_cfg(synthetic_root, out, "MODEL.PROPOT.INIT.IMS_PER_BATCH", ims)
        torch.manual_seed(0)
        model = build_model(cfg)
        pairs = load_text_image_dataset("CUHKPEDES", cfg).train
        labels = [p.pid for p in pairs]
        cfg.MODEL.PROPOT.INIT.CACHE_DIR = str(tmp_path / f"cache{ims}")
        results.append(ip.load_or_compute_initial_prototypes(model, pairs, labels, NUM_IDS, cfg))
    assert batch_sizes == [0, 5]  # 0: extract_pair_features falls back to TEST.IMS_PER_BATCH
    assert results[0][2] == results[1][2] == "computed"
    assert torch.allclose(results[0][0], results[1][0], atol=1e-4)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


def test_training_data_digest_covers_every_field_and_is_fast(tmp_path):
    root = str(tmp_path / "data")
    pairs = [
        TrainPair(i // 6, i // 2, f"{root}/CUHK-PEDES/imgs/cam_a/{i // 2:06d}.jpg", f"person {i}")
        for i in range(68126)  # CUHK-PEDES's number of training pairs
    ]
    labels = [p.pid for p in pairs]
    n = labels[-1] + 1
    start = time.process_time()
    digest = ip.training_data_digest(pairs, labels, n, root)
    assert time.process_time() - start < 1.0
    moved = [dataclasses.replace(p, img_path=p.img_path.replace(root, "/elsewhere")) for p in pairs]
    assert ip.training_data_digest(moved, labels, n, "/elsewhere/") == digest  # root stripped
    p0 = pairs[5]
    for changed in (
        dataclasses.replace(p0, image_id=7),
        dataclasses.replace(p0, img_path=p0.img_path + "x"),
        dataclasses.replace(p0, caption=p0.caption + "."),
    ):
        assert ip.training_data_digest([*pairs[:5], changed, *pairs[6:]], labels, n, root) != digest
    relabelled = [*labels[:5], labels[5] + 1, *labels[6:]]
    assert ip.training_data_digest(pairs, relabelled, n, root) != digest
    assert ip.training_data_digest(pairs, labels, n + 1, root) != digest
    fingerprint = ip.digest_to_fingerprint(digest)
    assert fingerprint != 0 and -(2**63) <= fingerprint < 2**63


def test_extraction_runs_at_the_training_resolution(synthetic_root, tmp_path):
    """Eq. (1) is computed at INPUT.SIZE_TRAIN with the test transform, also when SIZE_TEST
    differs; extract_pair_features keeps SIZE_TEST as its default."""
    out = str(tmp_path / "out")
    cfg = propot_cfg(synthetic_root, out, "INPUT.SIZE_TEST", "[96,48]")
    torch.manual_seed(0)
    model = build_model(cfg)
    sizes = []
    forward = model.forward

    def recording(batch):
        if "images" in batch:
            sizes.append(tuple(batch["images"].shape[-2:]))
        return forward(batch)

    model.forward = recording
    pairs = load_text_image_dataset("CUHKPEDES", cfg).train
    labels = [p.pid for p in pairs]
    pt_v, pt_t, source = ip.load_or_compute_initial_prototypes(model, pairs, labels, NUM_IDS, cfg)
    assert source == "computed" and sizes and set(sizes) == {(64, 32)}
    ref_v, ref_t = direct_sums(model, pairs, propot_cfg(synthetic_root, out))  # test size 64x32
    assert torch.allclose(pt_v, ref_v, atol=1e-4) and torch.allclose(pt_t, ref_t, atol=1e-4)
    sizes.clear()
    with pytest.raises(ValueError, match="INPUT.SIZE_TRAIN"):  # the model is built for 64x32
        extract_pair_features(model, pairs[:4], cfg)
    assert sizes == [(96, 48)]
    # the extraction size is part of the cache key
    meta = ip.initial_prototype_cache_meta(cfg, model, len(pairs), NUM_IDS)
    assert meta["extraction_size"] == [64, 32]
    cfg_big = propot_cfg(synthetic_root, out, "INPUT.SIZE_TRAIN", "[96,48]")
    meta_big = ip.initial_prototype_cache_meta(cfg_big, model, len(pairs), NUM_IDS)
    assert ip.initial_prototype_cache_path(cfg, meta) != ip.initial_prototype_cache_path(
        cfg_big, meta_big
    )


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
    with pytest.raises(ValueError, match="image_sum_over must be one of"):
        ip.initial_prototypes_from_features(feats_v, feats_t, labels, 3, image_sum_over="caption")


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


def _run_hook(cfg, model, train_set, caplog):
    hook = PropotInitialPrototypeHook(cfg, None)
    hook.trainer = SimpleNamespace(model=model, train_set=train_set)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="propot"):
        hook.before_train()
    return hook.source


def test_checkpoint_made_for_other_data_is_recomputed(synthetic_root, tmp_path, caplog):
    """MODEL.WEIGHTS from a Propot checkpoint (loaded by the engine's ExtCheckpointer, as the
    trainer does): the prototypes are reused only for the same training data."""
    from fastreid_ext.engine.trainer import ExtTrainer

    out = str(tmp_path / "out")
    cfg = propot_cfg(synthetic_root, out)
    train_set = ExtTrainer.build_train_set(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert _run_hook(cfg, model, train_set, caplog) == "computed"
    path = tmp_path / "propot.pth"
    torch.save({"model": model.state_dict()}, path)

    def loaded(num_ids=NUM_IDS, state_path=path):
        c = propot_cfg(synthetic_root, out, "MODEL.HEADS.NUM_CLASSES", str(num_ids))
        m = build_model(c)
        ExtCheckpointer(m).load(str(state_path))
        return c, m

    c, same = loaded()
    assert _run_hook(c, same, train_set, caplog) == "checkpoint" and not caplog.text
    # another identity count: initial_v/initial_t are dropped, so they are computed again
    c, wider = loaded(NUM_IDS + 2)
    assert not bool(wider.prototypes.initialized)
    assert _run_hook(c, wider, train_set, caplog) == "computed"
    assert torch.allclose(wider.prototypes.initial_v[:NUM_IDS], model.prototypes.initial_v)
    assert wider.prototypes.initial_v[NUM_IDS:].abs().sum() == 0
    # the same identity count but other pairs: recomputed, with a warning
    edited = SimpleNamespace(
        pairs=[dataclasses.replace(p, caption="a person") for p in train_set.pairs],
        labels=train_set.labels,
    )
    c, moved = loaded()
    assert _run_hook(c, moved, edited, caplog) == "computed"
    assert "computed from other training data" in caplog.text
    assert not torch.allclose(moved.prototypes.initial_t, model.prototypes.initial_t)
    assert torch.allclose(moved.prototypes.initial_v, model.prototypes.initial_v, atol=1e-5)
    # a checkpoint without the fingerprint: used as it is, with a warning
    state = {k: v for k, v in model.state_dict().items() if k != "prototypes.data_fingerprint"}
    torch.save({"model": state}, tmp_path / "old.pth")
    c, old = loaded(state_path=tmp_path / "old.pth")
    assert _run_hook(c, old, edited, caplog) == "checkpoint"
    assert "no prototypes.data_fingerprint" in caplog.text
