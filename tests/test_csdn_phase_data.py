"""CSDN phase data and losses in numbers: the phase-3 loss terms (weights, views, label order,
MSEL pairs), the MSEL input checks, the image / text banks (batching, quirk switches)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.meta_arch import build_model

from csdn.banks import PairBankSampler, extract_pair_bank, extract_text_bank, image_bank_train_mode
from csdn.modeling.encoder import VisualOutputs
from csdn.modeling.losses import msel_loss, supcon_loss, wrt_triplet_loss
from fastreid_ext.config import ConfigValueError
from fastreid_ext.data.vi import (
    INFRARED,
    VISIBLE,
    build_vi_sampler,
    build_vi_train_set,
    write_synthetic_sysu,
)

from .test_csdn_modules import _cfg, _image_batch


class _FeatureStub(torch.nn.Module):
    """Stands in for the image encoder with strongly image-dependent features (a random-init CLIP
    gives nearly equal features for every image): rows are [visible; infrared] as the real one.
    """

    def __init__(self, global_dim: int, proj_dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w_g = torch.randn(96, global_dim, generator=g)
        self.w_p = torch.randn(96, proj_dim, generator=g)

    def forward(self, visible=None, infrared=None) -> VisualOutputs:
        x = torch.cat([t for t in (visible, infrared) if t is not None])
        z = F.normalize(F.adaptive_avg_pool2d(x, (8, 4)).flatten(1), dim=1)  # [B, 96]
        return VisualOutputs((z @ self.w_g).abs()[:, :, None, None] + 0.1, z @ self.w_p)


def _parts(model, images, modality):
    """GeM feature, f_p and both heads' logits of one modality's images (eval mode)."""
    x = model._normalise(images)
    out = model.image_encoder(*((x, None) if modality == VISIBLE else (None, x)))
    f_g, _, logits_g = model.head_gem(out.global_feat)
    _, _, logits_p = model.head_proj(out.proj_feat)
    return f_g, out.proj_feat, logits_g, logits_p


@torch.no_grad()
def test_image_losses_weights_views_and_label_order():
    torch.manual_seed(0)
    cfg = _cfg()
    c = cfg.MODEL.CSDN  # the authors' lambda1..3 and MSEL weight (their main.py defaults)
    weights = (c.TRIPLET.WEIGHT, c.HSE.VIS_WEIGHT, c.HSE.IR_WEIGHT, c.MSEL.WEIGHT, c.ID.WEIGHT)
    assert weights == (0.15, 0.05, 0.1, 1.0, 1.0) and c.MSEL.ENABLED
    model = build_model(cfg).eval()  # BatchNorm running statistics: images are independent
    enc = model.image_encoder
    model.image_encoder = _FeatureStub(enc.global_dim, enc.proj_dim)
    n, d = model.num_classes, model.text_bank_visible.shape[1]
    for head, dim in ((model.head_gem, enc.global_dim), (model.head_proj, enc.proj_dim)):
        head.classifier.weight.normal_(std=dim**-0.5)  # logits of order 1
    model.text_bank_visible.copy_(torch.randn(n, d) / d)
    model.text_bank_infrared.copy_(torch.randn(n, d) / d)
    batch = _image_batch()
    y = batch["vis_targets"]
    a, b, r = (_parts(model, x, m) for x, m in ((batch["vis_images"][:, 0], VISIBLE),
                                                (batch["vis_images"][:, 1], VISIBLE),
                                                (batch["ir_images"], INFRARED)))  # fmt: skip
    labels = torch.cat([y, y, y])  # view-major: [view A; view B; infrared]
    f_g, f_p = (torch.cat([a[i], b[i], r[i]]) for i in (0, 1))
    logits_g, logits_p = (torch.cat([a[i], b[i], r[i]]) for i in (2, 3))
    want = {
        "loss_id": F.cross_entropy(logits_g, labels) + F.cross_entropy(logits_p, labels),
        "loss_triplet": 0.15 * (wrt_triplet_loss(f_g, labels) + wrt_triplet_loss(f_p, labels)),
        "loss_msel": msel_loss(a[0], r[0], y, 2) + msel_loss(a[1], r[1], y, 2),  # (view A, IR)
        "loss_hse_vis": 0.05 * F.cross_entropy(a[1] @ model.text_bank_visible.t(), y),  # A only
        "loss_hse_ir": 0.1 * F.cross_entropy(r[1] @ model.text_bank_infrared.t(), y),
    }
    got = model.image_losses(batch)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    # the test can tell views and label orders apart
    wrong_view = 0.05 * F.cross_entropy(b[1] @ model.text_bank_visible.t(), y)
    assert abs(float(wrong_view - want["loss_hse_vis"])) > 1e-4  # tolerance above: 1e-6
    item_major = y.repeat_interleave(3)
    wrong_order = F.cross_entropy(logits_g, item_major) + F.cross_entropy(logits_p, item_major)
    assert abs(float(wrong_order - want["loss_id"])) > 1e-4
    wrong_pair = msel_loss(b[0], r[0], y, 2) + msel_loss(b[1], r[1], y, 2)
    assert abs(float(wrong_pair - want["loss_msel"])) > 1e-4


def test_msel_checks_its_inputs():
    with pytest.raises(ConfigValueError, match="MSEL.ENABLED.*DATALOADER.NUM_INSTANCE < 2"):
        build_model(_cfg("DATALOADER.NUM_INSTANCE", "1"))
    build_model(_cfg("DATALOADER.NUM_INSTANCE", "1", "MODEL.CSDN.MSEL.ENABLED", "False"))
    model = build_model(_cfg()).train()
    batch = _image_batch()
    batch["ir_targets"] = batch["vis_targets"].flip(0)
    with pytest.raises(ValueError, match="ir_targets.*row by row"):
        model(batch)


def test_fusion_losses_index_the_class_texts():
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    y = torch.tensor([4, 1, 1, 0])
    with torch.no_grad():
        t_vis, t_ir = model.class_texts(torch.arange(model.num_classes))
    feats = torch.randn(4, t_vis.shape[1])
    got = model.fusion_losses(
        {"feats": feats, "targets": y, "class_text_vis": t_vis, "class_text_ir": t_ir}
    )
    fused = model.fusion(t_vis[y], t_ir[y])
    torch.testing.assert_close(got["loss_sii_i2t"], supcon_loss(feats, fused, y, y))
    torch.testing.assert_close(got["loss_sii_t2i"], supcon_loss(fused, feats, y, y))


def test_text_bank_quirk_switch_turns_sii_dropout_on_and_off():
    model = build_model(_cfg()).train()
    banks = {}
    for train_mode in (True, False):
        for seed in (0, 1):
            torch.manual_seed(seed)
            banks[train_mode, seed] = extract_text_bank(model, 4, fusion_train_mode=train_mode)
    assert not torch.allclose(banks[True, 0][0], banks[True, 1][0])  # dropout active
    assert torch.equal(banks[False, 0][0], banks[False, 1][0])
    assert model.training and model.fusion.training  # modes restored
    with torch.no_grad():
        want = model.eval().text_targets(torch.arange(model.num_classes))
    torch.testing.assert_close(banks[False, 0][0], want[0])
    assert banks[False, 0][0].shape == (model.num_classes, model.text_bank_visible.shape[1])


def test_image_bank_batches_and_fusion_bank_quirk_switch(tmp_path):
    root = str(tmp_path)
    write_synthetic_sysu(root, 10, 1, seed=4, image_size=(32, 16), split_counts=(6, 1, 3),
                         camera_probability=1.0)  # fmt: skip
    opts = ["DATASETS.ROOT", root, "DATASETS.NAMES", "('SYSUMM01CrossModal',)",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "MODEL.CSDN.PHASE1.IMS_PER_BATCH", "5"]  # fmt: skip
    cfg = _cfg(*opts)
    cfg.MODEL.HEADS.NUM_CLASSES = 7
    assert image_bank_train_mode(cfg, 1) and not image_bank_train_mode(cfg, 0)
    off = _cfg(*opts, "MODEL.CSDN.QUIRKS.FUSION_BANK_TRAIN_MODE", "False")
    assert not image_bank_train_mode(off, 1)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    sizes, encode = [], model.encode_proj
    model.encode_proj = lambda x, m: (sizes.append(x.shape[0]), encode(x, m))[1]
    bn = model.image_encoder.stems[0][1]
    before = bn.running_mean.clone()
    v, r, y = extract_pair_bank(model, cfg, seed=3, train_mode=False)
    # the sampler draws 28 // 8 + 1 = 4 batches of 8 pairs; forward batches hold 5 pairs
    # (PHASE1.IMS_PER_BATCH), the incomplete last one is dropped
    assert sizes == [5] * 12 and v.shape == r.shape and v.shape[0] == 30
    assert y.dtype == torch.int64 and torch.equal(bn.running_mean, before)
    pairs = build_vi_train_set(cfg, is_train=False)
    sampler = build_vi_sampler(cfg, pairs, seed=3)
    sampler.set_epoch(0)
    flat = PairBankSampler(sampler.global_batches(), 5).pairs
    assert flat.shape == (30, 2)
    assert y.tolist() == [pairs.visible_labels[i] for i in flat[:, 0]]
    assert y.tolist() == [pairs.infrared_labels[i] for i in flat[:, 1]]
    v2, _, y2 = extract_pair_bank(model, cfg, seed=3, train_mode=True)
    assert torch.equal(y, y2) and not torch.allclose(v, v2, atol=1e-4)  # batch statistics
    assert not torch.equal(bn.running_mean, before) and not model.image_encoder.training
    ranks = [PairBankSampler(sampler.global_batches(), 4, rank, 2) for rank in (0, 1)]
    assert [len(s) for s in ranks] == [8, 8]
    whole = PairBankSampler(sampler.global_batches(), 4).pairs  # all 32 pairs
    for step, (a, b) in enumerate(zip(*ranks)):
        assert a + b == whole[step * 4 : step * 4 + 4].tolist()
    with pytest.raises(ConfigValueError, match="PHASE1.IMS_PER_BATCH = 5 .* divisible by"):
        PairBankSampler(sampler.global_batches(), 5, 0, 2)
