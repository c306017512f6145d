"""SYSU-MM01 / RegDB layouts, trial galleries, the cross-modal sampler, CAJ transforms, the VI
evaluator end to end, and the synthetic writers."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from fastreid.config import get_cfg

from fastreid_ext.config import add_fastreid_ext_config, apply_config_extensions
from fastreid_ext.data.vi import (
    INFRARED,
    VISIBLE,
    ChannelAdapGray,
    ChannelExchange,
    ChannelRandomErasing,
    CrossModalIdentitySampler,
    RegDBCrossModal,
    SYSUMM01CrossModal,
    VIDatasetError,
    build_vi_sampler,
    build_vi_train_set,
    build_vi_transforms,
    write_synthetic_regdb,
    write_synthetic_sysu,
)
from fastreid_ext.data.vi.loaders import build_vi_loader
from fastreid_ext.evaluation.inference import run_inference
from fastreid_ext.evaluation.vi_evaluator import VIReIDEvaluator, evaluate_plan
from fastreid_ext.evaluation.vi_metrics import average_trials, reference_metrics_from_similarity


@pytest.fixture(scope="module")
def vi_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("vi"))
    write_synthetic_sysu(
        root,
        num_ids=16,
        images_per_camera=3,
        seed=0,
        image_size=(32, 16),
        split_counts=(8, 2, 6),
        camera_probability=0.6,
    )
    write_synthetic_regdb(
        root, num_ids=8, images_per_modality=3, num_trials=2, seed=0, image_size=(32, 16)
    )
    return root


def _cfg(root: str, **over):
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    cfg.DATASETS.ROOT = root
    cfg.INPUT.SIZE_TRAIN = [32, 16]
    cfg.INPUT.SIZE_TEST = [32, 16]
    cfg.MODEL.PIXEL_MEAN = [100.0, 110.0, 120.0]
    cfg.MODEL.PIXEL_STD = [50.0, 60.0, 70.0]
    cfg.DATALOADER.NUM_WORKERS = 0
    for k, v in over.items():
        node, *rest = k.split("__")
        target = cfg
        for part in [node] + rest[:-1]:
            target = target[part]
        target[rest[-1]] = v
    return cfg


# ---------------------------------------------------------------------------------- datasets
def test_sysu_layout_and_training_set(vi_root):
    d = SYSUMM01CrossModal(vi_root)
    exp = os.path.join(vi_root, "SYSU-MM01", "exp")
    lines = open(os.path.join(exp, "test_id.txt")).read().splitlines()
    assert len(lines) == 1 and len(lines[0].split(",")) == 6
    assert d.test_ids == sorted(int(x) for x in lines[0].split(","))
    train_ids = {x.pid for x in d.train_visible} | {x.pid for x in d.train_infrared}
    assert not train_ids & set(d.test_ids) and len(train_ids) == 10  # train + val
    assert {x.camid for x in d.train_visible} <= {1, 2, 4, 5}
    assert {x.camid for x in d.train_infrared} <= {3, 6}
    assert all(x.modality == INFRARED for x in d.train_infrared)
    assert sorted({x.label for x in d.train_visible}) == list(range(d.num_train_pids))
    label_of = {x.pid: x.label for x in d.train_infrared}
    assert all(label_of[x.pid] == x.label for x in d.train_visible)
    assert sorted(label_of, key=label_of.get) == sorted(label_of)  # ascending pid order
    for x in d.train_visible[:3] + d.train_infrared[:3]:
        assert x.img_path.endswith(f"cam{x.camid}/{x.pid:04d}/" + os.path.basename(x.img_path))


def test_sysu_query_and_seeded_trial_galleries(vi_root):
    d = SYSUMM01CrossModal(vi_root)
    base = os.path.join(vi_root, "SYSU-MM01")
    query = d.query()
    expected_q = []
    for p in d.test_ids:  # identity, then camera 3 before 6, then file name
        for c in (3, 6):
            folder = os.path.join(base, f"cam{c}", f"{p:04d}")
            if os.path.isdir(folder):
                expected_q += [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    assert [x.img_path for x in query] == expected_q and len(query) > 0
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        for trial in (0, 3):
            draw = random.Random(trial)  # AGW: random.seed(trial), one choice per folder
            expected = []
            for p in d.test_ids:
                for c in cams:
                    folder = os.path.join(base, f"cam{c}", f"{p:04d}")
                    if os.path.isdir(folder):
                        expected.append(
                            os.path.join(folder, draw.choice(sorted(os.listdir(folder))))
                        )
            got = d.gallery(trial, mode)
            assert [x.img_path for x in got] == expected
            assert {x.camid for x in got} <= set(cams) and all(x.modality == VISIBLE for x in got)
    assert [x.img_path for x in d.gallery(1)] != [x.img_path for x in d.gallery(2)]
    multi = d.gallery(4, "all", "multi")
    assert multi == d.gallery(4, "all", "multi")
    per_folder = {}
    for x in multi:
        per_folder.setdefault((x.pid, x.camid), []).append(x.img_path)
    assert all(len(v) == len(set(v)) == 3 for v in per_folder.values())  # 3 < 10 images each


def test_sysu_evaluation_plan_indexes_each_image_once(vi_root):
    d = SYSUMM01CrossModal(vi_root)
    plan = d.evaluation_plan(["all-single", "indoor-multi"], num_trials=3)
    paths = [x.img_path for x in plan.images]
    assert len(paths) == len(set(paths))
    assert [t.name for t in plan.tasks] == ["all-single", "indoor-multi"]
    for trial, idx in enumerate(plan.tasks[0].galleries):
        assert [plan.images[i] for i in idx] == d.gallery(trial, "all")
    assert [plan.images[i] for i in plan.tasks[1].query] == d.query()
    with pytest.raises(KeyError, match="SYSU_SETTINGS"):
        d.evaluation_plan(["all-double"], 1)


def test_dataset_errors_name_the_file(tmp_path, vi_root):
    with pytest.raises(VIDatasetError, match="SYSU-MM01 folder not found"):
        SYSUMM01CrossModal(str(tmp_path))
    bad = tmp_path / "SYSU-MM01" / "exp"
    bad.mkdir(parents=True)
    (bad / "train_id.txt").write_text("1,2,x3\n")
    with pytest.raises(VIDatasetError, match=r"train_id.txt: 'x3'"):
        SYSUMM01CrossModal(str(tmp_path))
    idx = tmp_path / "RegDB" / "idx"
    idx.mkdir(parents=True)
    (idx / "train_visible_1.txt").write_text("Visible/1/a.bmp 0\nVisible/1/b.bmp\n")
    with pytest.raises(VIDatasetError, match="train_visible_1.txt line 2"):
        RegDBCrossModal(str(tmp_path), trial=1)
    with pytest.raises(ValueError, match="REGDB_TRIAL"):
        RegDBCrossModal(vi_root, trial=11)


def test_regdb_trials_and_directions(vi_root):
    d1, d2 = RegDBCrossModal(vi_root, trial=1), RegDBCrossModal(vi_root, trial=2)
    assert d1.num_train_pids == 4 and len(d1.train_visible) == len(d1.train_infrared) == 12
    assert {x.pid for x in d1.test_visible} == {x.pid for x in d1.test_thermal}
    assert [x.img_path for x in d1.test_visible] != [x.img_path for x in d2.test_visible]
    assert all(os.path.isfile(x.img_path) for x in d1.test_thermal)
    assert d1.query("v2i") == d1.gallery("i2v") == d1.test_visible
    assert d1.query("i2v") == d1.gallery("v2i") == d1.test_thermal
    plan = d1.evaluation_plan(["v2i", "i2v"])
    v2i, i2v = plan.tasks
    assert [plan.images[i] for i in v2i.query] == d1.test_visible
    assert [plan.images[i] for i in i2v.query] == d1.test_thermal
    feats = torch.randn(len(plan.images), 6, generator=torch.Generator().manual_seed(0))
    res = evaluate_plan(plan, feats)
    pids = np.array([x.pid for x in plan.images])
    sim = (feats[v2i.query] @ feats[v2i.galleries[0]].t()).numpy()
    for name, s, q, g in (
        ("v2i", sim, v2i.query, v2i.galleries[0]),
        ("i2v", sim.T, i2v.query, i2v.galleries[0]),
    ):
        ref = average_trials(
            [reference_metrics_from_similarity(s, pids[q], pids[g], protocol="regdb")]
        )
        assert res[name] == pytest.approx(ref, rel=1e-12)


def test_sysu_inputs_do_not_collide_with_fastreid_sysu():
    from fastreid.data.datasets import DATASET_REGISTRY

    assert DATASET_REGISTRY.get("SYSU_mm") is not SYSUMM01CrossModal
    assert DATASET_REGISTRY.get("SYSUMM01CrossModal") is SYSUMM01CrossModal


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


def test_vi_transform_pipelines_from_config(vi_root):
    cfg = _cfg(
        vi_root,
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


def test_pair_set_loader_batches(vi_root):
    cfg = _cfg(
        vi_root,
        DATASETS__NAMES=("SYSUMM01CrossModal",),
        INPUT__VI__VISIBLE_AUG_VIEWS=[["ChannelRandomErasing"], ["ChannelExchange"]],
    )
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE = 8, 2
    ts = build_vi_train_set(cfg)
    sampler = build_vi_sampler(cfg, ts)
    batch = next(iter(build_vi_loader(cfg, ts, sampler)))
    assert batch["vis_images"].shape == (8, 2, 3, 32, 16)
    assert batch["ir_images"].shape == (8, 3, 32, 16)
    assert torch.equal(batch["vis_targets"], batch["ir_targets"])
    assert set(batch["ir_camids"].tolist()) <= {3, 6}


# ---------------------------------------------------------------------------------- evaluator
class _OracleModel(torch.nn.Module):
    """Features = one-hot identity + modality-dependent noise (eval-mode image encoder)."""

    def forward(self, batch):
        g = torch.Generator().manual_seed(int(batch["indices"][0]))
        feats = torch.nn.functional.one_hot(batch["targets"] % 40, 40).float()
        noise = 0.08 if int(batch["modality"][0]) == INFRARED else 0.04
        assert (batch["modality"] == batch["modality"][0]).all()  # one modality per batch
        return {"image_feats": feats + noise * torch.randn(feats.shape, generator=g)}


def test_vi_evaluator_end_to_end(vi_root):
    cfg = _cfg(vi_root)
    cfg.TEST.IMS_PER_BATCH = 16
    cfg.TEST.VI.SYSU_SETTINGS = ["all-single", "indoor-single"]
    cfg.TEST.VI.TRIALS = 3
    loader, evaluator = VIReIDEvaluator.build(cfg, "SYSUMM01CrossModal", "")
    res = run_inference(_OracleModel(), loader, evaluator)
    for key in ("R1", "R5", "R10", "R20", "mAP", "mINP", "indoor-single/R1", "indoor-single/mAP"):
        assert 0.0 <= res[key] <= 100.0
    assert res["metric"] == res["R1"] > 90.0
    cfg.TEST.VI.REGDB_DIRECTIONS = ["i2v", "v2i"]
    loader, evaluator = VIReIDEvaluator.build(cfg, "RegDBCrossModal", "")
    res = run_inference(_OracleModel(), loader, evaluator)
    assert "v2i/R1" in res and res["metric"] == res["R1"]


# ---------------------------------------------------------------------------------- writers
def test_synthetic_writers_are_deterministic_and_infrared_has_no_colour(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for root in (a, b):
        write_synthetic_sysu(
            root,
            num_ids=4,
            images_per_camera=1,
            seed=3,
            image_size=(32, 16),
            split_counts=(2, 1, 1),
        )

    def tree(root):
        out = {}
        for folder, _, names in os.walk(os.path.join(root, "SYSU-MM01")):
            for n in names:
                path = os.path.join(folder, n)
                out[os.path.relpath(path, root)] = open(path, "rb").read()
        return out

    ta = tree(a)
    assert ta == tree(b) and "SYSU-MM01/exp/val_id.txt" in ta
    d = SYSUMM01CrossModal(a)
    from PIL import Image

    ir = np.asarray(Image.open(d.query()[0].img_path).convert("RGB")).astype(int)
    vis = np.asarray(Image.open(d.train_visible[0].img_path).convert("RGB")).astype(int)
    assert np.abs(ir[..., 0] - ir[..., 1]).max() <= 8  # JPEG chroma noise only
    assert np.abs(vis[..., 0] - vis[..., 2]).max() > 40
    with pytest.raises(FileExistsError):
        write_synthetic_sysu(a, num_ids=4, split_counts=(2, 1, 1))
