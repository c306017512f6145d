"""CPCL's kNN keys (MODEL.CPCL.CLUSTER.KNN_BACKEND / KNN_HNSW_EF / KNN_IVF_NPROBE): invalid values
name the key, and each value reaches the search that CPCL's pseudo labelling runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastreid_ext.clustering.knn_approx as knn_approx
from cpcl.config import check_cpcl_config
from cpcl.pseudo_labels import compute_pseudo_labels
from fastreid_ext.clustering import cluster_pseudo_labels
from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine import build_cfg

from .conftest import REPO

DEMO = str(REPO / "configs" / "CPCL" / "demo.yml")
C = "MODEL.CPCL.CLUSTER."


@pytest.mark.parametrize(
    "key,value,allowed",
    [("KNN_HNSW_EF", "0", ">= 1"), ("KNN_IVF_NPROBE", "0", ">= 1"), ("KNN_BACKEND", "x", "'ivf'")],
)
def test_invalid_knn_values_name_the_key(key, value, allowed):
    with pytest.raises(ConfigValueError) as err:
        check_cpcl_config(build_cfg(DEMO, [C + key, value]))
    assert err.value.key == C + key and allowed in err.value.allowed


def _pairs(n: int = 240, d: int = 16):
    rng = np.random.default_rng(0)
    ids = np.arange(n) // 6
    centers = rng.standard_normal((n // 6, d))
    img = centers[ids] + 0.3 * rng.standard_normal((n, d))
    txt = centers[ids] + 0.3 * rng.standard_normal((n, d))
    return torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32), ids


@pytest.mark.parametrize("backend", ["hnsw", "ivf"])
def test_knn_keys_reach_the_approximate_search(backend, monkeypatch):
    seen = []
    real = knn_approx._faiss_index

    def spy(x, name, ef, nprobe, width, seed):
        seen.append((name, ef, nprobe))
        return real(x, name, ef, nprobe, width, seed)

    monkeypatch.setattr(knn_approx, "_faiss_index", spy)
    opts = [C + "KNN_BACKEND", backend, C + "KNN_HNSW_EF", "77", C + "KNN_IVF_NPROBE", "6"]
    opts += [C + "DEDUP_IMAGES", "False"]
    cfg = build_cfg(DEMO, opts)
    img, txt, ids = _pairs()
    out = compute_pseudo_labels(img, txt, np.arange(len(ids)), cfg)
    assert seen == [(backend, 77, 6), (backend, 77, 6)]  # image and text modality
    c = cfg.MODEL.CPCL.CLUSTER
    exact = cluster_pseudo_labels(txt, c.K1, c.K2, c.EPS, c.MIN_SAMPLES)
    assert out.stats["text_clusters"] >= 20
    # well separated identities (and IVF searching all of its min(4 sqrt(N), N / 39) = 6 cells):
    # the approximate search finds the exact neighbours
    assert np.array_equal(out.text_labels, exact)


def test_the_exact_backends_give_identical_pseudo_labels():
    img, txt, ids = _pairs()
    labels = {}
    for backend in ("auto", "torch", "faiss"):
        cfg = build_cfg(DEMO, [C + "KNN_BACKEND", backend, C + "DEDUP_IMAGES", "False"])
        out = compute_pseudo_labels(img, txt, np.arange(len(ids)), cfg)
        labels[backend] = (out.image_labels, out.text_labels)
    for backend in ("torch", "faiss"):
        assert all(np.array_equal(a, b) for a, b in zip(labels["auto"], labels[backend]))
