"""Every ``MODEL.CPCL.CLUSTER`` key reaches the place where it is used: on the probe of
tests/test_cpcl_config_keys.py (the trainer built from a config, its hook at an epoch start), the
arguments of the kNN search, the Jaccard stage, DBSCAN and OPLM exactly as CPCL's clustering calls
them, the feature extraction's batches, and when the hook clusters.
"""

from __future__ import annotations

import numpy as np
import pytest

from .test_cpcl_config_keys import PROBE, TEST_BATCH, Probe, probe_factory, shared_probe


@pytest.fixture(scope="module")
def probe(synthetic_root, tmp_path_factory) -> Probe:
    return shared_probe(synthetic_root, tmp_path_factory)


@pytest.fixture
def probe_with(synthetic_root, tmp_path, monkeypatch):
    return probe_factory(synthetic_root, tmp_path, monkeypatch)


# ---------------------------------------------------------------------- clustering
def test_cluster_k1(probe):
    assert probe.spies["knn"].values("k") == [PROBE["CLUSTER.K1"]] * 2  # images, captions


def test_cluster_k2(probe):
    assert probe.spies["query_expansion"].values("k2") == [PROBE["CLUSTER.K2"]] * 2


def test_cluster_eps(probe):
    assert probe.spies["radius_graph"].values("max_distance") == [PROBE["CLUSTER.EPS"]] * 2
    assert probe.spies["dbscan"].values("eps") == [PROBE["CLUSTER.EPS"]] * 2


def test_cluster_min_samples(probe):
    assert probe.spies["dbscan"].values("min_samples") == [PROBE["CLUSTER.MIN_SAMPLES"]] * 2


def test_cluster_knn_backend(probe):
    assert probe.spies["knn"].values("backend") == ["torch", "torch"]
    assert probe.spies["approx_knn"].calls == []  # an exact backend


@pytest.mark.parametrize("backend", ["hnsw", "ivf"])
def test_cluster_knn_backend_approximate(probe_with, backend):
    p = probe_with(CLUSTER__KNN_BACKEND=backend, step=False)
    assert p.spies["approx_knn"].values("backend") == [backend, backend]


def test_cluster_knn_hnsw_ef(probe_with):
    # used by the hnsw backend only (the probe's exact backend ignores it)
    p = probe_with(CLUSTER__KNN_BACKEND="hnsw", step=False)
    assert p.spies["approx_knn"].values("ef") == [PROBE["CLUSTER.KNN_HNSW_EF"]] * 2


def test_cluster_knn_ivf_nprobe(probe_with):
    # used by the ivf backend only
    p = probe_with(CLUSTER__KNN_BACKEND="ivf", step=False)
    assert p.spies["approx_knn"].values("nprobe") == [PROBE["CLUSTER.KNN_IVF_NPROBE"]] * 2


def test_cluster_dedup_images(probe, probe_with):
    pairs = probe.hook.base.pairs
    images = len({p.image_id for p in pairs})
    assert images < len(pairs)
    assert [len(x) for x in probe.spies["knn"].values("x")] == [images, len(pairs)]
    assert len(np.unique(probe.spies["oplm"].values("image_groups")[0])) == images
    off = probe_with(CLUSTER__DEDUP_IMAGES=False, step=False)
    assert [len(x) for x in off.spies["knn"].values("x")] == [len(pairs), len(pairs)]
    assert np.array_equal(off.spies["oplm"].values("image_groups")[0], np.arange(len(pairs)))


def test_cluster_ims_per_batch(probe, probe_with):
    # the extraction's two passes (images, captions): CLUSTER.IMS_PER_BATCH, else TEST's batch
    assert probe.spies["encode_batches"].values("batch_size") == [24, 24]
    zero = probe_with(CLUSTER__IMS_PER_BATCH=0, step=False)
    assert zero.spies["encode_batches"].values("batch_size") == [TEST_BATCH, TEST_BATCH]


def test_cluster_start_epoch(probe_with):
    p = probe_with(CLUSTER__START_EPOCH=2, CLUSTER__PERIOD=1, epochs=range(4), step=False)
    assert [e["clusterings"] for e in p.per_epoch] == [0, 0, 1, 2]
    # before it: every label -1, empty memories
    assert all(e["labelled"] == 0 and e["memory_sizes"] == (0, 0) for e in p.per_epoch[:2])
    assert p.per_epoch[2]["labels_epoch"] == 2 and min(p.per_epoch[2]["memory_sizes"]) > 0


def test_cluster_period(probe_with):
    p = probe_with(CLUSTER__START_EPOCH=1, CLUSTER__PERIOD=3, epochs=range(8), step=False)
    assert [e["clusterings"] for e in p.per_epoch] == [0, 1, 1, 1, 2, 2, 2, 3]
    assert [e["labels_epoch"] for e in p.per_epoch] == [-1, 1, 1, 1, 4, 4, 4, 7]
