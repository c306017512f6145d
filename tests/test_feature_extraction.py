"""Whole-training-set feature extraction equals encoding every pair directly, in dataset order."""

from __future__ import annotations

import torch
from fastreid.modeling.meta_arch import build_model

from fastreid_ext.data.text_image import load_text_image_dataset, read_image
from fastreid_ext.data.transforms import build_image_transforms
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.feature_extraction import extract_pair_features
from fastreid_ext.text import ClipTokenizer

from .conftest import REPO, tiny_opts


def test_extract_pair_features_matches_direct_encoding(synthetic_root, tmp_path):
    cfg = build_cfg(
        str(REPO / "configs" / "Baseline" / "demo.yml"),
        tiny_opts(synthetic_root, str(tmp_path))
        + ["MODEL.HEADS.NUM_CLASSES", "24", "TEST.IMS_PER_BATCH", "7"],
    )
    model = build_model(cfg)
    pairs = load_text_image_dataset("CUHKPEDES", cfg).train[:40]
    img, txt = extract_pair_features(model, pairs, cfg)
    assert img.shape == (40, 64) and txt.shape == (40, 64)
    assert model.training  # restored after extraction
    model.eval()
    transform = build_image_transforms(cfg, is_train=False)
    tok = ClipTokenizer()
    with torch.no_grad():
        for k in (0, 1, 17, 39):
            image = transform(read_image(pairs[k].img_path))[None]
            direct = model({"images": image, "caption_ids": tok([pairs[k].caption])})
            assert torch.allclose(img[k], direct["image_feats"][0], atol=1e-5)
            assert torch.allclose(txt[k], direct["text_feats"][0], atol=1e-5)
    # the two captions of one image share its image feature
    same = [k for k in range(1, 40) if pairs[k].image_id == pairs[0].image_id]
    assert same and torch.equal(img[same[0]], img[0])
