"""The CPCL demo recipe learns synthetic data far above chance without identity labels, and its
pseudo labels get better over the epochs (tiny random CLIP, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cpcl.diagnostics import clustering_scores

from .conftest import LEARN_IMAGES_PER_ID, LEARN_TEST_IDS, REPO, run_train_net

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

NUM_TEST_IDS, IMAGES_PER_ID = LEARN_TEST_IDS, LEARN_IMAGES_PER_ID


def test_cpcl_demo_learns_without_identity_labels(learn_root, tmp_path):
    out = tmp_path / "learn"
    epochs = 12
    run_train_net(
        [
            "--config-file",
            str(REPO / "configs" / "CPCL" / "demo.yml"),
            "DATASETS.ROOT",
            learn_root,
            "OUTPUT_DIR",
            str(out),
            "SOLVER.MAX_EPOCH",
            str(epochs),
            "TEST.EVAL_PERIOD",
            str(epochs),
            "SOLVER.CHECKPOINT_PERIOD",
            str(epochs),
        ]
    )
    res = json.loads((out / "results.json").read_text())
    records = [json.loads(x) for x in (out / "cpcl_pseudo_labels.jsonl").read_text().splitlines()]
    chance_r1 = 100.0 / NUM_TEST_IDS
    print(f"R1 {res['R1']:.2f} R10 {res['R10']:.2f} mAP {res['mAP']:.2f} (chance R1 {chance_r1})")
    for r in records:
        print(
            f"epoch {r['epoch']}: images {r['image_clusters']} clusters / "
            f"{r['image_outliers']} outliers, texts {r['text_clusters']} / {r['text_outliers']}; "
            f"NMI image {r['image_nmi']:.3f} text {r['text_nmi']:.3f} "
            f"(clustered-only {r['image_nmi_clustered']:.3f} / {r['text_nmi_clustered']:.3f}), "
            f"ARI image {r['image_ari']:.3f} text {r['text_ari']:.3f}"
        )
    assert [r["epoch"] for r in records] == list(range(4, epochs))  # clustering from START_EPOCH
    # the thresholds below were measured on this data: measure again if it changes
    assert (NUM_TEST_IDS, IMAGES_PER_ID) == (40, 4)
    # Thresholds from the seed spread of this exact run (data seed 1, SEED 1..5, one CPU thread);
    # chance with 4 positives among the 160 test images: R1 2.5, R10 22.9, mAP 5.3.
    #   R1  15.00  9.06 12.50  9.06 13.12  (mean 11.8, sd 2.6)
    #   R10 63.75 50.62 53.12 58.44 55.00  (mean 56.2, sd 5.1)
    #   mAP 18.02 13.93 14.90 15.02 14.87  (mean 15.4, sd 1.6)
    # each threshold is the lowest seed minus half the seed sd, rounded down to 0.5: 3x, 2.1x and
    # 2.5x chance (the earlier R10 >= 50 passed SEED 2 by 0.6, mAP >= 10 was far below every seed)
    assert res["R1"] >= 7.5
    assert res["R10"] >= 48.0
    assert res["mAP"] >= 13.0

    def late(key):
        return sum(r[key] for r in records[-3:]) / 3

    def gain(key):
        return late(key) - records[0][key]

    # Pseudo-label quality, first clustering (epoch 4) -> mean of the last three (SEED 1..5):
    #   image NMI  +0.025 +0.027 +0.023 +0.012 +0.011  (sd 0.007)
    #   text NMI   +0.071 +0.050 +0.026 +0.001 +0.026  (sd 0.026)
    #   image + text ARI  +0.068 +0.068 +0.034 -0.005 +0.046
    # The image NMI improves on every seed (threshold: lowest minus half the sd); the text NMI
    # does not fall on any seed but its gain can be nil (the earlier "+0.03" passed 2 seeds of
    # 5); the ARI gain is not robust at this budget (SEED 4: -0.005) and is not asserted.
    assert gain("image_nmi") > 0.0075
    assert gain("text_nmi") >= 0.0


def test_clustering_nmi_does_not_reward_outliers():
    truth = np.repeat(np.arange(10), 4)
    perfect = truth.copy()
    assert clustering_scores(truth, perfect)["nmi"] == pytest.approx(1.0)
    assert clustering_scores(truth, np.full(40, -1))["nmi"] == 0.0
    # turning members of correct clusters into outliers lowers the NMI (with singleton outliers
    # it would stay at 0.82 here); the clustered-only NMI stays 1 with a lower clustered share
    half = np.where(np.arange(40) % 4 < 2, truth, -1)
    scores = clustering_scores(truth, half)
    assert scores["nmi"] < 0.8
    assert scores["nmi_clustered"] == pytest.approx(1.0) and scores["clustered"] == 0.5
    # absorbing the outliers into their true clusters raises it again
    assert clustering_scores(truth, perfect)["nmi"] > scores["nmi"]
