"""Every documented ``MODEL.CPCL`` key reaches the place where it is used (this file: the probe,
TRAIN_SET, DIAGNOSTICS and OPLM; CLUSTER in tests/test_cpcl_config_keys_cluster.py, PCM, ICPM and
PMM in tests/test_cpcl_config_keys_model.py, on the same probe).

A probe builds the trainer of configs/CPCL/demo.yml from a config (``build_trainer``), runs its
``CPCLPseudoLabelHook`` at the start of an epoch and one training forward of its model, with
spies on the calls that consume the keys' values. Each key's test sets a value other than the
default and observes it where it is used: at the consuming call (k1/k2 of the Jaccard stage,
DBSCAN's eps and min_samples exactly as CPCL calls them, OPLM's mode and threshold, the
extraction batch, the pair selection, the loss functions' arguments), inside the module the
trainer built (the memories' momentum and rule), or as its effect (losses, memory updates,
clusterings, log records that are or are not there).

The probe values differ from the defaults, from demo.yml and from each other (``1 - momentum``
and integers off by one included), so a key that is ignored, read from another key or off by
one shows another value; switches are also tested in the other direction.
``test_every_key_has_a_test`` fails when a key is added without a test named after it.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import pytest
import torch
from fastreid.config import CfgNode, get_cfg

import cpcl.hooks
import cpcl.modeling.losses
import cpcl.pseudo_labels
import fastreid_ext.clustering.dbscan
import fastreid_ext.clustering.jaccard
import fastreid_ext.clustering.knn_approx
import fastreid_ext.engine.feature_extraction
from cpcl.config import add_cpcl_config
from cpcl.hooks import CPCLPseudoLabelHook
from fastreid_ext.config import add_fastreid_ext_config
from fastreid_ext.engine import build_cfg, seed_everything
from fastreid_ext.engine.trainer import build_trainer

from .config_docs import leaf_keys
from .conftest import REPO, tiny_opts

DEMO = str(REPO / "configs" / "CPCL" / "demo.yml")
BATCH, TEST_BATCH = 16, 20  # SOLVER.IMS_PER_BATCH, TEST.IMS_PER_BATCH of every probe

# MODEL.CPCL.<key> of the probe (START_EPOCH and PERIOD: their own tests)
PROBE: Dict[str, Any] = {
    "TRAIN_SET": "both",
    "PCM.NAME": "cross",
    "PCM.TAU": 0.07,
    "PCM.WEIGHT": 0.6,
    "ICPM.POSITIVES": "text",
    "ICPM.TAU": 0.11,
    "ICPM.EPS": 1e-3,
    "ICPM.WEIGHT": 0.8,
    "PMM.UPDATE.NAME": "hard",
    "PMM.UPDATE.MOMENTUM": 0.37,
    "CLUSTER.K1": 9,
    "CLUSTER.K2": 5,
    "CLUSTER.EPS": 0.55,
    "CLUSTER.MIN_SAMPLES": 3,
    "CLUSTER.KNN_BACKEND": "torch",
    "CLUSTER.KNN_HNSW_EF": 77,
    "CLUSTER.KNN_IVF_NPROBE": 7,
    "CLUSTER.IMS_PER_BATCH": 24,
    "OPLM.NAME": "two_stage",
    "OPLM.MIN_SIM": 0.9,  # leaves outliers: "both" keeps fewer pairs than "either"
    # switches (demo.yml flips both defaults): each key's test checks the other value too
    "DIAGNOSTICS.ENABLED": True,
    "CLUSTER.DEDUP_IMAGES": True,
}
SWITCHES = ("DIAGNOSTICS.ENABLED", "CLUSTER.DEDUP_IMAGES")


class Spy:
    """Calls ``fn`` and records each call's arguments by name (defaults applied) and result."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.signature = fn, inspect.signature(fn)
        self.calls: List[Dict[str, Any]] = []
        self.results: List[Any] = []

    def __call__(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append(dict(bound.arguments))
        self.results.append(self.fn(*args, **kwargs))
        return self.results[-1]

    def values(self, name: str) -> List[Any]:
        return [call[name] for call in self.calls]


# the calls that consume the keys' values: (module, attribute) as the caller looks it up
SPIED = {
    "knn": (fastreid_ext.clustering.jaccard, "knn_ranking"),  # k1, backend; rows per modality
    "approx_knn": (fastreid_ext.clustering.knn_approx, "approx_knn"),  # ef, nprobe
    "query_expansion": (fastreid_ext.clustering.jaccard, "query_expansion"),  # k2
    "radius_graph": (fastreid_ext.clustering.jaccard, "jaccard_radius_graph"),  # eps
    "dbscan": (fastreid_ext.clustering.dbscan, "DBSCAN"),  # eps, min_samples
    "oplm": (cpcl.pseudo_labels, "outlier_pseudo_label_mining"),  # mode, min_similarity
    "encode_batches": (fastreid_ext.engine.feature_extraction, "InferenceBatchSampler"),
    "clustering": (cpcl.hooks, "compute_pseudo_labels"),  # START_EPOCH, PERIOD
    "select": (cpcl.hooks, "select_training_pairs"),  # train_set
    "pcm": (cpcl.modeling.losses, "pcm_loss"),  # tau, name
    "positives": (cpcl.modeling.losses, "icpm_positives"),  # kind
    "icpm": (cpcl.modeling.losses, "icpm_loss"),  # tau, eps, positives
}
ORIGINAL = {name: getattr(module, attr) for name, (module, attr) in SPIED.items()}


@dataclass
class Probe:
    """A trainer after its hook's ``before_epoch`` at each of ``epochs`` (``per_epoch``: what
    the hook had installed after each) and one training forward on a batch of its training set
    (``feats``: that step's ``[B, D]`` features, ``memories_before``: ``[K, D]`` before it)."""

    trainer: Any
    hook: CPCLPseudoLabelHook
    spies: Dict[str, Spy]
    per_epoch: List[Dict[str, Any]] = field(default_factory=list)
    batch: Dict[str, Any] = field(default_factory=dict)
    feats: Dict[str, torch.Tensor] = field(default_factory=dict)
    losses: Dict[str, torch.Tensor] = field(default_factory=dict)
    memories_before: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def model(self):
        return self.trainer.model

    def record(self) -> Dict[str, Any]:
        """The last clustering's line of ``cpcl_pseudo_labels.jsonl``."""
        path = os.path.join(self.trainer.cfg.OUTPUT_DIR, "cpcl_pseudo_labels.jsonl")
        with open(path) as f:
            return json.loads(f.read().splitlines()[-1])


def _epoch_state(probe: Probe, epoch: int) -> Dict[str, Any]:
    hook, pmm = probe.hook, probe.model.pmm
    return {
        "epoch": epoch,
        "clusterings": len(probe.spies["clustering"].calls),
        "labels_epoch": hook.labels_epoch,
        "labelled": int(np.sum(hook.image_labels >= 0) + np.sum(hook.text_labels >= 0)),
        "memory_sizes": (pmm.image.num_clusters, pmm.text.num_clusters),
    }


def run_probe(
    mp: pytest.MonkeyPatch,
    root: str,
    out: str,
    values: Dict[str, Any],
    epochs: Sequence[int] = (0,),
    step: bool = True,
) -> Probe:
    """The probe of demo.yml on ``root`` with ``MODEL.CPCL`` ``values`` (clustering from epoch
    0 unless they set CLUSTER.START_EPOCH); ``mp`` installs the spies."""
    spies = {name: Spy(ORIGINAL[name]) for name in SPIED}
    for name, (module, attr) in SPIED.items():
        mp.setattr(module, attr, spies[name])
    overrides = {"CLUSTER.START_EPOCH": 0, **values}
    opts = tiny_opts(root, out) + ["TEST.IMS_PER_BATCH", str(TEST_BATCH)]
    opts += [x for key, value in overrides.items() for x in ("MODEL.CPCL." + key, str(value))]
    cfg = build_cfg(DEMO, opts)
    assert cfg.SOLVER.IMS_PER_BATCH == BATCH
    cfg.freeze()
    os.makedirs(out, exist_ok=True)
    seed_everything(cfg.SEED)
    trainer = build_trainer(cfg)
    hook = next(h for h in trainer._hooks if isinstance(h, CPCLPseudoLabelHook))
    probe = Probe(trainer, hook, spies)
    for epoch in epochs:
        trainer.epoch = epoch
        hook.before_epoch()
        probe.per_epoch.append(_epoch_state(probe, epoch))
    if step:
        model = trainer.model.train()
        probe.memories_before = {
            "image": model.pmm.image.features.clone(),
            "text": model.pmm.text.features.clone(),
        }
        probe.batch = next(iter(trainer._trainer.data_loader))
        extract = model.extract

        def recording_extract(batch):
            feats = extract(batch)
            probe.feats = {k: feats[k].global_feat.detach().clone() for k in ("image", "text")}
            return feats

        mp.setattr(model, "extract", recording_extract)
        with torch.no_grad():
            probe.losses = model(probe.batch)
    return probe


def shared_probe(root: str, tmp_path_factory) -> Probe:
    """Every key at its PROBE value (the spies are removed again once it has run)."""
    with pytest.MonkeyPatch.context() as mp:
        return run_probe(mp, root, str(tmp_path_factory.mktemp("cpcl_keys")), PROBE)


def probe_factory(root: str, tmp_path, monkeypatch) -> Callable[..., Probe]:
    """``run(epochs=(0,), step=True, **values)``: the probe with PROBE changed by ``values``
    (keys with ``__`` for dots, e.g. ``PCM__ENABLED=False``)."""

    def run(epochs: Sequence[int] = (0,), step: bool = True, **values) -> Probe:
        changed = {k.replace("__", "."): v for k, v in values.items()}
        assert set(changed) <= set(all_keys()), changed
        out = tmp_path / f"probe{len(list(tmp_path.iterdir()))}"
        return run_probe(monkeypatch, root, str(out), {**PROBE, **changed}, epochs, step)

    return run


@pytest.fixture(scope="module")
def probe(synthetic_root, tmp_path_factory) -> Probe:
    return shared_probe(synthetic_root, tmp_path_factory)


@pytest.fixture
def probe_with(synthetic_root, tmp_path, monkeypatch):
    return probe_factory(synthetic_root, tmp_path, monkeypatch)


def default_cpcl() -> CfgNode:
    """``MODEL.CPCL`` with the defaults of cpcl/config.py."""
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    add_cpcl_config(cfg)
    return cfg.MODEL.CPCL


def all_keys() -> List[str]:
    return sorted(leaf_keys(default_cpcl()))


def _get(node: CfgNode, key: str) -> Any:
    for part in key.split("."):
        node = node[part]
    return node


# ---------------------------------------------------------------------- the probe itself
def test_every_key_has_a_test():
    from . import test_cpcl_config_keys_cluster as cluster_keys
    from . import test_cpcl_config_keys_model as model_keys

    names = set(globals()) | set(vars(cluster_keys)) | set(vars(model_keys))
    missing = [k for k in all_keys() if f"test_{k.lower().replace('.', '_')}" not in names]
    assert missing == []


def test_probe_values_differ_from_the_defaults_the_demo_and_each_other():
    demo, defaults = build_cfg(DEMO).MODEL.CPCL, default_cpcl()
    for key, value in PROBE.items():
        assert type(value) is type(_get(defaults, key)), key
        if key in SWITCHES:
            assert _get(demo, key) != _get(defaults, key), key
        else:
            assert value != _get(defaults, key) and value != _get(demo, key), key
    numbers = [v for v in PROBE.values() if type(v) in (int, float)]
    assert len(set(numbers)) == len(numbers)
    # nor is a flipped momentum or an integer off by one another key's value
    wrong = [1 - PROBE["PMM.UPDATE.MOMENTUM"]]
    wrong += [v + d for v in numbers for d in (-1, 1) if type(v) is int]
    assert not set(wrong) & set(numbers)


# ---------------------------------------------------------------------- which pairs train
def test_train_set(probe):
    assert probe.spies["select"].values("train_set") == ["both"]
    iv, it = probe.hook.image_labels >= 0, probe.hook.text_labels >= 0
    both = np.flatnonzero(iv & it)
    # the probe's labels tell "both" from "either" (OPLM.MIN_SIM leaves outliers) and "all"
    assert BATCH <= len(both) < int(np.sum(iv | it)) <= len(iv)
    assert np.array_equal(probe.trainer.train_set.indices, both)


def test_diagnostics_enabled(probe, probe_with):
    """Logging only: the NMI/ARI scores are in the clustering's record exactly when enabled."""
    assert probe.hook.diagnostics is not None
    assert {"image_nmi", "image_ari", "text_nmi", "text_ari"} <= set(probe.record())
    off = probe_with(DIAGNOSTICS__ENABLED=False, step=False)
    assert off.hook.diagnostics is None
    record = off.record()
    assert "image_clusters" in record and not any(k.endswith(("_nmi", "_ari")) for k in record)


# ---------------------------------------------------------------------- OPLM
def test_oplm_enabled(probe, probe_with):
    assert probe.spies["oplm"].values("mode") == ["two_stage"]
    off = probe_with(OPLM__ENABLED=False, step=False)
    assert off.spies["oplm"].values("mode") == ["off"]
    r = off.record()
    assert r["image_outliers_after_oplm"] == r["image_outliers"]
    assert r["text_outliers_after_oplm"] == r["text_outliers"]


def test_oplm_name(probe):
    assert probe.spies["oplm"].values("mode") == ["two_stage"]
    r = probe.record()  # the mining did assign outliers
    assert r["text_outliers_after_oplm"] < r["text_outliers"]


def test_oplm_min_sim(probe, probe_with):
    assert probe.spies["oplm"].values("min_similarity") == [PROBE["OPLM.MIN_SIM"]]
    kept = probe.record()
    for value in (-1.0, -1.5):  # -1 (the default) and below: no threshold
        free = probe_with(OPLM__MIN_SIM=value, step=False)
        assert free.spies["oplm"].values("min_similarity") == [None]
        # the same clustering; the threshold is what kept those outliers
        assert free.record()["text_outliers"] == kept["text_outliers"]
        assert free.record()["text_outliers_after_oplm"] < kept["text_outliers_after_oplm"]
