"""CPCL's PMM: centroids, the momentum update (standard, multi-modal, hard) against per-sample
formulas, state dicts with a changing number of clusters, the model's own update after its
losses, identical memories across two gloo ranks, and a failure on the main rank raised on every
rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cpcl.config import PMM_UPDATES
from cpcl.modeling.losses import hcm_losses
from cpcl.modeling.pmm import PrototypicalMultiModalMemory
from cpcl.trainer import CPCLTrainer
from fastreid_ext.config import ConfigValueError
from fastreid_ext.data.text_image import collate
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.distributed import run_on_main_and_share
from fastreid_ext.modeling.memory import PrototypicalMemory, cluster_centroids

from .conftest import REPO

DEMO = str(REPO / "configs" / "CPCL" / "demo.yml")


def sequential_update(memory: torch.Tensor, feats, labels, momentum: float) -> torch.Tensor:
    """The formula, one sample at a time in batch order (cluster-contrast's loop)."""
    memory = memory.clone()
    for x, y in zip(feats, labels):
        if y < 0:
            continue
        memory[y] = momentum * memory[y] + (1 - momentum) * x / x.norm()
        memory[y] = memory[y] / memory[y].norm()
    return memory


def test_centroids_are_normalised_means_of_normalised_features():
    feats = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1, -1, 1])
    got = cluster_centroids(feats, labels)
    mean0 = torch.tensor([0.5, 0.5])
    mean1 = (torch.tensor([1.0, 1.0]) / 2**0.5 + torch.tensor([0.0, -1.0])) / 2
    torch.testing.assert_close(got, torch.stack([mean0 / mean0.norm(), mean1 / mean1.norm()]))
    assert cluster_centroids(feats, labels, num_clusters=4).shape == (4, 2)


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_update_equals_sequential_formula_with_repeated_labels(momentum):
    g = torch.Generator().manual_seed(0)
    memory = PrototypicalMemory(16, momentum)
    memory.reset(torch.randn(6, 16, generator=g))
    before = memory.features.clone()
    feats = torch.randn(20, 16, generator=g) * 3
    labels = torch.tensor([2, 2, -1, 0, 2, 5, 5, 1, -1, 2, 0, 3, 3, 3, 3, 4, 2, 5, -1, 0])
    memory.update(feats, labels)
    expected = sequential_update(before, feats, labels, momentum)
    torch.testing.assert_close(memory.features, expected, rtol=0, atol=1e-6)
    assert not torch.equal(memory.features, before) or momentum == 1.0
    # every prototype stays on the unit sphere
    torch.testing.assert_close(memory.features.norm(dim=1), torch.ones(6))


def test_update_ignores_outliers_and_rejects_unknown_clusters():
    memory = PrototypicalMemory(4, 0.2)
    memory.reset(torch.eye(4)[:3])
    before = memory.features.clone()
    memory.update(torch.randn(3, 4), torch.tensor([-1, -1, -1]))
    assert torch.equal(memory.features, before)
    with pytest.raises(IndexError, match="only 3 clusters"):
        memory.update(torch.randn(1, 4), torch.tensor([3]))


def test_logits_and_state_dict_with_changing_cluster_count():
    memory = PrototypicalMemory(8, 0.1)
    memory.reset(torch.randn(5, 8))
    x = torch.randn(3, 8)
    torch.testing.assert_close(
        memory.logits(x, 0.05), F.normalize(x, dim=1) @ memory.features.t() / 0.05
    )
    other = PrototypicalMemory(8, 0.1)
    other.reset(torch.randn(2, 8))
    other.load_state_dict(memory.state_dict())
    assert torch.equal(other.features, memory.features)
    with pytest.raises(RuntimeError, match="expected"):
        other.load_state_dict({"features": torch.zeros(3, 7)})


def hard_update(memory: torch.Tensor, feats, labels, momentum: float) -> torch.Tensor:
    """cluster-contrast's CM_Hard with loops: per label, the sample of least cosine to M_y."""
    memory = memory.clone()
    for y in sorted({int(v) for v in labels if v >= 0}):
        members = [i for i in range(len(labels)) if labels[i] == y]
        sims = [float(feats[i] / feats[i].norm() @ memory[y]) for i in members]
        x = feats[members[sims.index(min(sims))]]
        memory[y] = momentum * memory[y] + (1 - momentum) * x / x.norm()
        memory[y] = memory[y] / memory[y].norm()
    return memory


def _batch(seed: int, b: int = 24, d: int = 8, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    v, t = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    t[3] = t[1] * 2  # an exact tie for the hard update: the first sample wins
    yv, yt = torch.randint(-1, k, (b,), generator=g), torch.randint(-1, k, (b,), generator=g)
    yt[3] = yt[1]
    return v, t, yv, yt


def _pmm(name: str = "standard", k: int = 5, d: int = 8, momentum: float = 0.3):
    g = torch.Generator().manual_seed(9)
    pmm = PrototypicalMultiModalMemory(d, momentum, name)
    image = torch.randn(k, d, generator=g)
    pmm.reset(image, torch.randn(k, d, generator=g))
    return pmm


def test_pmm_updates_equal_their_per_sample_formulas():
    v, t, yv, yt = _batch(0)
    expected = {}
    start = _pmm()
    m0v, m0t = start.image.features.clone(), start.text.features.clone()
    expected["standard"] = (
        sequential_update(m0v, v, yv, 0.3),
        sequential_update(m0t, t, yt, 0.3),
    )
    # multi-modal: per pair the own feature, then the paired one, under the memory's label
    both_vt = [x for pair in zip(v, t) for x in pair]
    both_tv = [x for pair in zip(t, v) for x in pair]
    expected["multi_modal"] = (
        sequential_update(m0v, both_vt, yv.repeat_interleave(2), 0.3),
        sequential_update(m0t, both_tv, yt.repeat_interleave(2), 0.3),
    )
    expected["hard"] = (hard_update(m0v, v, yv, 0.3), hard_update(m0t, t, yt, 0.3))
    assert set(expected) == set(PMM_UPDATES)
    results = {}
    for name in PMM_UPDATES:
        pmm = _pmm(name)
        pmm.update(v, t, yv, yt, gather=False)
        torch.testing.assert_close(pmm.image.features, expected[name][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(pmm.text.features, expected[name][1], rtol=0, atol=1e-6)
        results[name] = pmm.image.features
    assert not torch.allclose(results["standard"], results["hard"])
    assert not torch.allclose(results["standard"], results["multi_modal"])
    with pytest.raises(ConfigValueError, match="MODEL.CPCL.PMM.UPDATE.NAME"):
        PrototypicalMultiModalMemory(8, 0.3, "average")


def test_pmm_resizes_to_a_checkpoints_cluster_counts_before_loading():
    saved = _pmm(k=5).state_dict()
    saved["text.features"] = saved["text.features"][:3]
    fresh = PrototypicalMultiModalMemory(8, 0.3)  # empty, as a model before --resume
    assert fresh.image.num_clusters == fresh.text.num_clusters == 0
    ckpt = {f"module.pmm.{k}": v for k, v in saved.items()}
    fresh.resize_like(ckpt, "module.pmm.")
    assert tuple(fresh.image.features.shape) == (5, 8) and fresh.text.num_clusters == 3
    fresh.load_state_dict(saved)
    assert all(torch.equal(fresh.state_dict()[k], saved[k]) for k in saved)
    fresh.resize_like({}, "pmm.")  # nothing stored: shapes unchanged
    assert fresh.image.num_clusters == 5


@pytest.mark.parametrize("update", [True, False])
def test_model_updates_its_memories_after_losses_on_the_old_memories(synthetic_root, update):
    """The hook only resets the memories; the model's training step computes its losses against
    them and then momentum-updates them with the step's features (MODEL.CPCL.PMM.UPDATE)."""
    opts = ["DATASETS.ROOT", synthetic_root, "MODEL.CPCL.PMM.UPDATE.ENABLED", str(update)]
    cfg = build_cfg(DEMO, opts + ["MODEL.CPCL.PMM.UPDATE.NAME", "multi_modal"])
    torch.manual_seed(0)
    model = CPCLTrainer.build_model(cfg).train()
    batch = collate([CPCLTrainer.build_train_set(cfg)[i] for i in range(8)])
    yv, yt = torch.tensor([0, 0, 1, -1, 3, 2, -1, 1]), torch.tensor([2, -1, 0, 1, 1, -1, 2, 0])
    batch["image_labels"], batch["text_labels"] = yv, yt
    g = torch.Generator().manual_seed(2)
    dim = model.backbone.embed_dim
    model.reset_memories(torch.randn(4, dim, generator=g), torch.randn(3, dim, generator=g))
    mv, mt = model.pmm.image.features.clone(), model.pmm.text.features.clone()

    feats = model.extract(batch)
    out = model.losses(feats, batch)
    v, t = feats["image"].global_feat, feats["text"].global_feat
    expected = hcm_losses(v, t, yv, yt, mv, mt, cfg.MODEL.CPCL, batch["image_ids"])
    assert set(out) == {"loss_pcm", "loss_icpm"}
    for key in out:
        assert torch.equal(out[key], expected[key]), key
    ref = PrototypicalMultiModalMemory(dim, 0.1, "multi_modal")
    ref.load_state_dict({"image.features": mv, "text.features": mt})  # bit-exact copy
    if update:
        ref.update(v, t, yv, yt, gather=False)
        assert not torch.equal(ref.image.features, mv) and not torch.equal(ref.text.features, mt)
    assert torch.equal(model.pmm.image.features, ref.image.features)
    assert torch.equal(model.pmm.text.features, ref.text.features)
    # the in-place update does not break the backward pass through the PCM logits
    sum(out.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = {}
    torch.manual_seed(0)
    memory = PrototypicalMemory(8, 0.3)
    memory.reset(torch.randn(4, 8))  # same start on both ranks
    for step in range(3):
        g = torch.Generator().manual_seed(100 * step + rank)  # different data per rank
        feats = torch.randn(5, 8, generator=g)
        labels = torch.randint(-1, 4, (5,), generator=g)
        memory.update(feats, labels, gather=True)
    out["memory"] = memory.features
    for name in PMM_UPDATES:
        pmm = _pmm(name)
        for step in range(2):
            pmm.update(*_batch(10 * step + rank), gather=True)
        out[name] = (pmm.image.features, pmm.text.features)

    def fail():
        raise ValueError("clustering exploded")

    try:
        run_on_main_and_share(fail, "test clustering")
        out["error"] = None
    except (ValueError, RuntimeError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["shared"] = run_on_main_and_share(lambda: ("labels of rank", dist.get_rank()), "ok")
    torch.save(out, os.path.join(out_dir, f"pmm_rank{rank}.pt"))
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


@pytest.mark.slow
def test_memories_stay_identical_across_two_gloo_ranks(tmp_path):
    """One pair of gloo ranks: PrototypicalMemory.update(gather=True), the PMM update in every
    rule, and run_on_main_and_share with a failure on the main rank."""
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"pmm_rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["memory"], r1["memory"])
    # and equal to one process updating with both ranks' batches in rank order
    torch.manual_seed(0)
    ref = PrototypicalMemory(8, 0.3)
    ref.reset(torch.randn(4, 8))
    start = ref.features.clone()
    for step in range(3):
        batches = []
        for rank in range(2):
            g = torch.Generator().manual_seed(100 * step + rank)
            batches.append(
                (torch.randn(5, 8, generator=g), torch.randint(-1, 4, (5,), generator=g))
            )
        ref.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    torch.testing.assert_close(r0["memory"], ref.features, rtol=0, atol=1e-6)
    assert not torch.equal(r0["memory"], start)
    for name in PMM_UPDATES:
        # identical on both ranks and equal to one process updating with both ranks' batches
        pmm = _pmm(name)
        for step in range(2):
            parts = [_batch(10 * step + r) for r in range(2)]
            cat = [torch.cat([p[k] for p in parts]) for k in range(4)]
            pmm.update(*cat, gather=False)
        for k, ref in enumerate((pmm.image.features, pmm.text.features)):
            assert torch.equal(r0[name][k], r1[name][k]), name
            torch.testing.assert_close(r0[name][k], ref, rtol=0, atol=1e-6)
    assert r0["error"] == "ValueError: clustering exploded"
    assert r1["error"] == (
        "RuntimeError: test clustering failed on the main process: ValueError: clustering exploded"
    )
    assert r0["shared"] == r1["shared"] == ("labels of rank", 0)
