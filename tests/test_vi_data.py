"""SYSU-MM01 / RegDB layouts, single-shot trial galleries, evaluation plans, dataset errors, the
paired training loader, the VI evaluator end to end (exact against the per-query reference) and
the synthetic writers."""

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
    RegDBCrossModal,
    SYSUMM01CrossModal,
    VIDatasetError,
    build_vi_sampler,
    build_vi_train_set,
    load_vi_dataset,
    write_synthetic_regdb,
    write_synthetic_sysu,
)
from fastreid_ext.data.vi.loaders import build_vi_loader
from fastreid_ext.evaluation.inference import run_inference
from fastreid_ext.evaluation.vi_evaluator import VIReIDEvaluator, _ordered, evaluate_plan
from fastreid_ext.evaluation.vi_reference import average_trials, reference_metrics_from_similarity


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
    with pytest.raises(VIDatasetError, match=r"train_id.txt line 1: 'x3'"):
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


def test_fastreid_sysu_mm_is_refused_as_a_vi_dataset(vi_root):
    cfg = _cfg(vi_root, DATASETS__NAMES=("SYSU_mm",))
    with pytest.raises(KeyError, match=r"DATASETS.TESTS: 'SYSU_mm'.*SYSU_mm is train-only"):
        load_vi_dataset("SYSU_mm", cfg, "DATASETS.TESTS")
    with pytest.raises(KeyError, match=r"DATASETS.NAMES: 'SYSU_mm'.*SYSUMM01CrossModal"):
        build_vi_train_set(cfg)
    assert type(load_vi_dataset("SYSUMM01CrossModal", cfg)) is SYSUMM01CrossModal


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

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, batch):
        g = torch.Generator().manual_seed(int(batch["indices"][0]))
        feats = torch.nn.functional.one_hot(batch["targets"] % 40, 40).float()
        noise = self.scale * (0.08 if int(batch["modality"][0]) == INFRARED else 0.04)
        assert (batch["modality"] == batch["modality"][0]).all()  # one modality per batch
        return {"image_feats": feats + noise * torch.randn(feats.shape, generator=g)}


def test_vi_evaluator_end_to_end(vi_root):
    cfg = _cfg(vi_root)
    cfg.TEST.IMS_PER_BATCH = 16
    cfg.TEST.VI.SYSU_SETTINGS = ["all-single", "indoor-single", "all-multi"]
    cfg.TEST.VI.TRIALS = 3
    loader, evaluator = VIReIDEvaluator.build(cfg, "SYSUMM01CrossModal", "")
    res = run_inference(_OracleModel(), loader, evaluator)
    assert res["metric"] == res["R1"] > 90.0
    # noisy features: the union-of-trials path equals the per-query reference trial by trial
    res = run_inference(_OracleModel(scale=10.0), loader, evaluator)
    assert 20.0 < res["R1"] < 90.0 and 20.0 < res["all-multi/mAP"] < 90.0
    plan = evaluator.plan
    feats = _ordered(evaluator._parts, len(plan.images)).double()
    pids = np.array([x.pid for x in plan.images])
    cams = np.array([x.camid for x in plan.images])
    for i, task in enumerate(plan.tasks):
        q = task.query
        trials = [
            reference_metrics_from_similarity(
                (feats[q] @ feats[g].t()).numpy(), pids[q], pids[g], cams[q], cams[g], "sysu"
            )
            for g in task.galleries
        ]
        assert len(trials) == 3 and len({tuple(g) for g in task.galleries}) == 3
        prefix = "" if i == 0 else f"{task.name}/"
        for key, value in average_trials(trials).items():
            assert res[prefix + key] == pytest.approx(value, rel=1e-9, abs=1e-9), prefix + key
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
