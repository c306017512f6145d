"""The CLIP text-image baseline: losses wired to the formulas, a step updates exactly the
trainable parameters, images are normalised out of place, inference uses only the encoders."""

from __future__ import annotations

import pytest
import torch
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

from fastreid_ext.config import add_fastreid_ext_config
from fastreid_ext.modeling.losses import identity_loss, mlm_loss, sdm_loss
from fastreid_ext.solver import build_optimizer
from fastreid_ext.text import ClipTokenizer, mask_tokens


def _cfg(losses=("SDM", "ID", "MLM")):
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    cfg.merge_from_file("configs/Baseline/Base-Baseline.yml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.NAME = "tiny-vit"
    cfg.MODEL.CLIP.RANDOM_INIT = True
    cfg.MODEL.T2I.LOSSES = list(losses)
    cfg.MODEL.T2I.MLM_HEADS = 2
    cfg.MODEL.T2I.MLM_DEPTH = 1
    cfg.MODEL.HEADS.NUM_CLASSES = 5
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.INPUT.SIZE_TEST = [64, 32]
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.EPS = 1e-8
    return cfg


def _batch(b=6):
    g = torch.Generator().manual_seed(0)
    tok = ClipTokenizer()
    caps = [f"a person in a {c} shirt" for c in ("red", "blue", "green", "black", "white", "red")]
    ids = tok(caps[:b])
    mlm_ids, mlm_labels = mask_tokens(ids, g, prob=0.5)
    return {
        "images": torch.rand(b, 3, 64, 32, generator=g) * 255,
        "caption_ids": ids,
        "mlm_ids": mlm_ids,
        "mlm_labels": mlm_labels,
        "targets": torch.tensor([0, 1, 2, 3, 4, 0][:b]),
    }


def test_losses_equal_the_formulas():
    """Every MODEL.T2I value reaches its loss (temperature, eps and weights differ from the loss
    functions' defaults), and MLM predicts the masked captions from the image tokens."""
    torch.manual_seed(0)
    cfg = _cfg(("SDM", "ID", "MLM"))
    t2i = cfg.MODEL.T2I
    t2i.SDM_TAU, t2i.SDM_EPS = 0.3, 1e-4
    t2i.SDM_WEIGHT, t2i.ID_WEIGHT, t2i.MLM_WEIGHT = 0.7, 0.4, 0.25
    model = build_model(cfg)
    batch = _batch()
    pids = batch["targets"]
    with torch.no_grad():
        feats = model.extract(batch)
        losses = model.losses(feats, batch)
        v, t = feats["image"].global_feat, feats["text"].global_feat
        sdm = sdm_loss(v, t, pids, 0.3, 1e-4)
        expected_id = identity_loss(model.classifier(v), model.classifier(t), pids)
        masked = model.backbone.encode_text_tokens(batch["mlm_ids"]).tokens
        scores = model.mlm_head(masked, feats["image"].tokens)
        mlm = mlm_loss(scores, batch["mlm_labels"])
        unmasked = model.mlm_head(feats["text"].tokens, feats["image"].tokens)
    assert set(losses) == {"loss_sdm", "loss_id", "loss_mlm"}
    assert float(losses["loss_sdm"]) == pytest.approx(0.7 * float(sdm))
    assert float(losses["loss_id"]) == pytest.approx(0.4 * float(expected_id))
    assert float(losses["loss_mlm"]) == pytest.approx(0.25 * float(mlm))
    # the configured values change the result: the defaults (tau 0.02) and the unmasked
    # captions give other losses
    assert float(sdm_loss(v, t, pids)) != pytest.approx(float(sdm))
    assert float(mlm_loss(unmasked, batch["mlm_labels"])) != pytest.approx(float(mlm))


def test_step_updates_trainable_and_not_frozen_parameters():
    torch.manual_seed(0)
    model = build_model(_cfg())
    model.train()
    frozen = "backbone.model.token_embedding.weight"
    model.get_parameter(frozen).requires_grad_(False)
    optimizer = build_optimizer(_cfg(), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batch()
    images = batch["images"].clone()
    loss = sum(model(batch).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.equal(batch["images"], images)  # normalised out of place
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    # CLIP's logit_scale is not used (the temperature is fixed) and is frozen by the backbone.
    assert set(unchanged) == {frozen, "backbone.model.logit_scale"}, unchanged


def test_inference_returns_encoder_features_only():
    model = build_model(_cfg()).eval()
    batch = _batch()
    out = model({"images": batch["images"]})
    assert set(out) == {"image_feats"} and out["image_feats"].shape == (6, 64)
    out = model({"caption_ids": batch["caption_ids"]})
    assert set(out) == {"text_feats"}
    assert torch.allclose(out["text_feats"], model.backbone.encode_text(batch["caption_ids"]))


def test_config_errors_are_named():
    cfg = _cfg(("SDM", "Triplet"))
    with pytest.raises(KeyError, match="MODEL.T2I.LOSSES"):
        build_model(cfg)
    cfg = _cfg(("ID",))
    cfg.MODEL.HEADS.NUM_CLASSES = 0
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_model(cfg)
