"""Every ``MODEL.CPCL`` key of the losses and the memories (PCM, ICPM, PMM) reaches the place
where it is used: on the probe of tests/test_cpcl_config_keys.py (the trainer built from a config,
one clustering by its hook, one training forward of its model), the arguments of the loss
functions as the model calls them, the losses it returns, the memories it built and updated.
"""

from __future__ import annotations

import pytest
import torch

from cpcl.modeling.pmm import PrototypicalMultiModalMemory

from .test_cpcl_config_keys import PROBE, Probe, probe_factory, shared_probe


@pytest.fixture(scope="module")
def probe(synthetic_root, tmp_path_factory) -> Probe:
    return shared_probe(synthetic_root, tmp_path_factory)


@pytest.fixture
def probe_with(synthetic_root, tmp_path, monkeypatch):
    return probe_factory(synthetic_root, tmp_path, monkeypatch)


def _positives(batch, labels: torch.Tensor) -> torch.Tensor:
    """ICPM's ``[B, B]`` positives written out: the pair itself, the same image (``image_ids``)
    and the same pseudo label (never -1)."""
    ids, b = batch["image_ids"], len(batch["image_ids"])
    rows = [
        [i == j or bool(ids[i] == ids[j]) or bool(labels[i] >= 0 and labels[i] == labels[j])
         for j in range(b)]
        for i in range(b)
    ]  # fmt: skip
    return torch.tensor(rows)


def test_the_probe_trains_on_labelled_pairs(probe):
    """What the tests below rely on: clusters in both memories, labelled pairs of both
    modalities in the batch, and image- and text-label positives that differ."""
    assert probe.model.pmm.image.num_clusters > 1 and probe.model.pmm.text.num_clusters > 1
    yv, yt = probe.batch["image_labels"], probe.batch["text_labels"]
    assert (yv >= 0).sum() >= 2 and (yt >= 0).sum() >= 2
    assert not torch.equal(_positives(probe.batch, yv), _positives(probe.batch, yt))
    assert set(probe.losses) == {"loss_pcm", "loss_icpm"}


# ---------------------------------------------------------------------- PCM
def test_pcm_enabled(probe, probe_with):
    assert len(probe.spies["pcm"].calls) == 1 and "loss_pcm" in probe.losses
    off = probe_with(PCM__ENABLED=False)
    assert set(off.losses) == {"loss_icpm"} and off.spies["pcm"].calls == []
    # the memories change only when PCM reads them
    assert torch.equal(off.model.pmm.image.features, off.memories_before["image"])


def test_pcm_name(probe):
    assert probe.spies["pcm"].values("name") == ["cross"]


def test_pcm_tau(probe):
    assert probe.spies["pcm"].values("tau") == [PROBE["PCM.TAU"]]


def test_pcm_weight(probe):
    (unweighted,) = probe.spies["pcm"].results
    assert float(unweighted) > 0
    assert torch.equal(probe.losses["loss_pcm"], PROBE["PCM.WEIGHT"] * unweighted)


# ---------------------------------------------------------------------- ICPM
def test_icpm_enabled(probe, probe_with):
    assert len(probe.spies["icpm"].calls) == 1 and "loss_icpm" in probe.losses
    off = probe_with(ICPM__ENABLED=False)
    assert set(off.losses) == {"loss_pcm"} and off.spies["icpm"].calls == []


def test_icpm_positives(probe):
    assert probe.spies["positives"].values("kind") == ["text"]
    (used,) = probe.spies["icpm"].values("positives")
    assert torch.equal(used.cpu(), _positives(probe.batch, probe.batch["text_labels"]))


def test_icpm_tau(probe):
    assert probe.spies["icpm"].values("tau") == [PROBE["ICPM.TAU"]]


def test_icpm_eps(probe):
    assert probe.spies["icpm"].values("eps") == [PROBE["ICPM.EPS"]]


def test_icpm_weight(probe):
    (unweighted,) = probe.spies["icpm"].results
    assert float(unweighted) > 0
    assert torch.equal(probe.losses["loss_icpm"], PROBE["ICPM.WEIGHT"] * unweighted)


# ---------------------------------------------------------------------- PMM
def _stepped(probe: Probe, momentum: float, name: str) -> bool:
    """Whether the model's memories equal those of before its step, updated with the step's
    features and labels by rule ``name`` with ``momentum``."""
    ref = PrototypicalMultiModalMemory(probe.feats["image"].shape[1], momentum, name)
    before = probe.memories_before
    ref.load_state_dict({"image.features": before["image"], "text.features": before["text"]})
    yv, yt = probe.batch["image_labels"], probe.batch["text_labels"]
    ref.update(probe.feats["image"], probe.feats["text"], yv, yt, gather=False)
    pmm = probe.model.pmm
    return torch.equal(pmm.image.features, ref.image.features) and torch.equal(
        pmm.text.features, ref.text.features
    )


def test_pmm_update_enabled(probe, probe_with):
    assert not torch.equal(probe.model.pmm.image.features, probe.memories_before["image"])
    assert not torch.equal(probe.model.pmm.text.features, probe.memories_before["text"])
    off = probe_with(PMM__UPDATE__ENABLED=False)
    assert "loss_pcm" in off.losses  # PCM read the memories, and they stayed
    assert torch.equal(off.model.pmm.image.features, off.memories_before["image"])
    assert torch.equal(off.model.pmm.text.features, off.memories_before["text"])


def test_pmm_update_name(probe):
    momentum = PROBE["PMM.UPDATE.MOMENTUM"]
    assert probe.model.pmm.name == "hard"
    assert _stepped(probe, momentum, "hard") and not _stepped(probe, momentum, "standard")


def test_pmm_update_momentum(probe):
    # inside the memories the model built, after the hook installed a clustering's centroids
    momentum = PROBE["PMM.UPDATE.MOMENTUM"]
    assert probe.model.pmm.image.momentum == probe.model.pmm.text.momentum == momentum
    assert _stepped(probe, momentum, "hard") and not _stepped(probe, 1 - momentum, "hard")
