"""SYSU-MM01 gallery draws on a layout of empty image files (cheap: nothing is decoded):
multi-shot seeding as the authors' code (sequential) and per trial, 10 of more than 10 images,
single-shot unaffected, lazily listed training set."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from fastreid.config import get_cfg

from fastreid_ext.config import add_fastreid_ext_config, apply_config_extensions
from fastreid_ext.data.vi import SYSUMM01CrossModal, VIDatasetError

#: images per (identity, camera) folder of the test identities (0: no folder)
TEST_FOLDERS = {
    3: {1: 12, 2: 13, 3: 2, 4: 10, 5: 15, 6: 1},
    4: {1: 11, 2: 12, 3: 1, 4: 0, 5: 12, 6: 2},
    7: {1: 14, 2: 10, 3: 3, 4: 12, 5: 11, 6: 0},
}


def _touch_layout(root: str, train_images: bool = True) -> str:
    """SYSU-MM01 tree of empty .jpg files; train 1, val 2, test 3, 4, 7."""
    base = os.path.join(root, "SYSU-MM01")
    os.makedirs(os.path.join(base, "exp"))
    for name, ids in (("train", "1"), ("val", "2"), ("test", "3,4,7")):
        with open(os.path.join(base, "exp", f"{name}_id.txt"), "w") as f:
            f.write(ids + "\n")
    folders = {pid: cams for pid, cams in TEST_FOLDERS.items()}
    if train_images:
        folders.update({1: {1: 2, 3: 1}, 2: {4: 1, 6: 2}})
    for pid, cams in folders.items():
        for cam, n in cams.items():
            if n:
                folder = os.path.join(base, f"cam{cam}", f"{pid:04d}")
                os.makedirs(folder)
                for k in range(n):
                    open(os.path.join(folder, f"{k:04d}.jpg"), "w").close()
    return base


def _authors_multi_shot(base: str, cams, num_trials: int, seed: int = 1):
    """CSDN's process_gallery_sysu in multi mode after seed_torch(seed): numpy's global state
    (a RandomState seeded once) consumed by trials 0, 1, ... with choice(list, 10, False)."""
    state = np.random.RandomState(seed)
    out = []
    for _ in range(num_trials):
        files = []
        for pid in sorted(TEST_FOLDERS):
            for cam in cams:
                folder = os.path.join(base, f"cam{cam}", f"{pid:04d}")
                if os.path.isdir(folder):
                    names = sorted(os.path.join(folder, n) for n in os.listdir(folder))
                    files.extend(str(p) for p in state.choice(names, 10, replace=False))
        out.append(files)
    return out


def test_multi_shot_sequential_seeding_reproduces_the_authors_draw(tmp_path):
    base = _touch_layout(str(tmp_path))
    d = SYSUMM01CrossModal(str(tmp_path))  # default: sequential, seed 1
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        want = _authors_multi_shot(base, cams, 10)
        got = [[x.img_path for x in g] for g in d.galleries(10, mode, "multi")]
        assert got == want
        assert [x.img_path for x in d.gallery(7, mode, "multi")] == want[7]
    draws = d.galleries(2, "all", "multi")
    assert draws[0] != draws[1]
    per_folder = {}
    for x in draws[0]:
        per_folder.setdefault((x.pid, x.camid), []).append(x.img_path)
    assert len(per_folder) == 11 and all(len(set(v)) == len(v) == 10 for v in per_folder.values())
    assert len(os.listdir(os.path.dirname(per_folder[(7, 1)][0]))) == 14  # 10 drawn of 14
    plan = d.evaluation_plan(["indoor-multi"], num_trials=3)
    indoor = d.galleries(3, "indoor", "multi")
    assert [[plan.images[i] for i in g] for g in plan.tasks[0].galleries] == indoor


def test_multi_shot_per_trial_seeding_and_seed(tmp_path):
    _touch_layout(str(tmp_path))
    seq = SYSUMM01CrossModal(str(tmp_path))
    per = SYSUMM01CrossModal(str(tmp_path), multi_shot_seeding="per_trial")
    seven = SYSUMM01CrossModal(str(tmp_path), multi_shot_seed=7)
    # a fresh RandomState(t) per trial: per-trial trial 1 == sequential trial 0 (seed 1)
    assert per.gallery(1, "all", "multi") == seq.gallery(0, "all", "multi")
    assert per.gallery(7, "all", "multi") == seven.gallery(0, "all", "multi")
    assert per.gallery(2, "all", "multi") != seq.gallery(2, "all", "multi")
    rng = np.random.RandomState(4)  # trial 4, folders (3, 1), (3, 2), (3, 4), then (3, 5)
    for files in [per._test_files[(3, c)] for c in (1, 2, 4, 5)]:
        want = [files[i] for i in rng.choice(len(files), 10, replace=False)]
    got = [x.img_path for x in per.gallery(4, "all", "multi") if (x.pid, x.camid) == (3, 5)]
    assert got == want and len(files) == 15 and len(set(got)) == 10
    # single-shot always uses AGW's random.seed(trial), whatever the multi-shot seeding
    for trial in (0, 5):
        draw = random.Random(trial)
        want = [draw.choice(per._test_files[(p, c)]) for p in (3, 4, 7) for c in (1, 2, 4, 5)
                if per._test_files[(p, c)]]  # fmt: skip
        for d in (seq, per, seven):
            assert [x.img_path for x in d.gallery(trial)] == want


def test_seeding_keys_from_config_and_errors(tmp_path):
    _touch_layout(str(tmp_path))
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    assert (cfg.TEST.VI.MULTI_SHOT_SEEDING, cfg.TEST.VI.MULTI_SHOT_SEED) == ("sequential", 1)
    cfg.TEST.VI.MULTI_SHOT_SEEDING, cfg.TEST.VI.MULTI_SHOT_SEED = "per_trial", 3
    d = SYSUMM01CrossModal.from_config(cfg, str(tmp_path))
    assert (d.multi_shot_seeding, d.multi_shot_seed) == ("per_trial", 3)
    cfg.TEST.VI.MULTI_SHOT_SEEDING = "global"
    with pytest.raises(KeyError, match="TEST.VI.MULTI_SHOT_SEEDING"):
        SYSUMM01CrossModal.from_config(cfg, str(tmp_path))
    with pytest.raises(ValueError, match="trial must be >= 0"):
        d.gallery(-1)


def test_training_tree_is_listed_only_when_used(tmp_path):
    _touch_layout(str(tmp_path), train_images=False)
    d = SYSUMM01CrossModal(str(tmp_path))
    plan = d.evaluation_plan(["all-single", "all-multi"], num_trials=2)
    assert len(plan.tasks) == 2 and d._train is None  # evaluation needs no training list
    with pytest.raises(VIDatasetError, match="no training identity has both"):
        _ = d.train_visible
    folder = os.path.join(str(tmp_path), "SYSU-MM01", "cam1", "0003")
    for name in sorted(os.listdir(folder))[:4]:
        os.remove(os.path.join(folder, name))  # 8 images left: multi-shot takes all of them
    few = SYSUMM01CrossModal(str(tmp_path)).gallery(0, "indoor", "multi")
    assert sorted(x.img_path for x in few if (x.pid, x.camid) == (3, 1)) == sorted(
        os.path.join(folder, n) for n in os.listdir(folder)
    )
    _touch_layout(str(tmp_path / "full"))
    full = SYSUMM01CrossModal(str(tmp_path / "full"))
    assert full.num_train_pids == 2 and len(full.train_visible) == 3
    assert [x.camid for x in full.train_infrared] == [3, 6, 6]
