"""The baseline demo recipe learns the synthetic data far above chance (tiny random CLIP, CPU)."""

from __future__ import annotations

import json

import pytest

from .conftest import LEARN_IMAGES_PER_ID, LEARN_TEST_IDS, REPO, run_train_net

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

NUM_TEST_IDS, IMAGES_PER_ID = LEARN_TEST_IDS, LEARN_IMAGES_PER_ID


def test_baseline_demo_learns_far_above_chance(learn_root, tmp_path):
    out = tmp_path / "learn"
    run_train_net(
        [
            "--config-file",
            str(REPO / "configs" / "Baseline" / "demo.yml"),
            "DATASETS.ROOT",
            learn_root,
            "OUTPUT_DIR",
            str(out),
            "SOLVER.MAX_EPOCH",
            "12",
            "TEST.EVAL_PERIOD",
            "12",
            "SOLVER.CHECKPOINT_PERIOD",
            "12",
        ]
    )
    res = json.loads((out / "results.json").read_text())
    print(f"R1 {res['R1']:.2f} R10 {res['R10']:.2f} mAP {res['mAP']:.2f}")
    # the thresholds below were measured on this data: measure again if it changes
    assert (NUM_TEST_IDS, IMAGES_PER_ID) == (40, 4)
    # chance with 4 positives among the 160 test images: R1 4 / 160 = 2.5, R10
    # 1 - C(156, 10) / C(160, 10) = 22.9, mAP 5.3 (expected AP of a random ranking)
    # Thresholds from the seed spread of this exact run (data seed 1, SEED 1..5, one CPU thread):
    #   R1  10.00 12.81  6.88 14.38 10.31  (mean 10.9, sd 2.9)
    #   R10 59.38 57.50 60.00 59.69 57.19  (mean 58.8, sd 1.3)
    #   mAP 18.23 18.23 15.44 17.94 16.16  (mean 17.2, sd 1.3)
    # each threshold is the lowest seed minus half the seed sd, rounded down to 0.5: 2x, 2.5x and
    # 2.7x chance. (R1 >= 3x chance, 7.5, failed SEED 3; R10 >= 50, the earlier "2x" of a 25 %
    # chance estimate, was below every seed.) The full demo (20 epochs, 200 ids, 80 test ids)
    # reaches R1 18.6 against a chance of 1.25.
    assert res["R1"] >= 5.0
    assert res["R10"] >= 56.5
    assert res["mAP"] >= 14.5
