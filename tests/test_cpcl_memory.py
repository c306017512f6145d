"""PrototypicalMemory (CPCL's PMM): centroids, the momentum update (standard, multi-modal, hard)
against per-sample formulas, state dicts with a changing number of clusters, identical memories
across two gloo ranks, and a failure on the main rank raised on every rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cpcl.pmm import PMM_MODES, update_memories
from fastreid_ext.engine.distributed import run_on_main_and_share
from fastreid_ext.modeling.memory import PrototypicalMemory, cluster_centroids


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


def _memories(k: int = 5, d: int = 8, momentum: float = 0.3):
    g = torch.Generator().manual_seed(9)
    mv, mt = PrototypicalMemory(d, momentum), PrototypicalMemory(d, momentum)
    mv.reset(torch.randn(k, d, generator=g))
    mt.reset(torch.randn(k, d, generator=g))
    return mv, mt


def test_pmm_modes_equal_their_per_sample_formulas():
    v, t, yv, yt = _batch(0)
    expected = {}
    mv, mt = _memories()
    m0v, m0t = mv.features.clone(), mt.features.clone()
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
    assert set(expected) == set(PMM_MODES)
    results = {}
    for mode in PMM_MODES:
        mv, mt = _memories()
        update_memories(mv, mt, v, t, yv, yt, mode, gather=False)
        torch.testing.assert_close(mv.features, expected[mode][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(mt.features, expected[mode][1], rtol=0, atol=1e-6)
        results[mode] = mv.features
    assert not torch.allclose(results["standard"], results["hard"])
    assert not torch.allclose(results["standard"], results["multi_modal"])
    with pytest.raises(ValueError, match="CPCL.PMM.MODE"):
        update_memories(mv, mt, v, t, yv, yt, "average")


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
    for mode in PMM_MODES:
        mv, mt = _memories()
        for step in range(2):
            update_memories(mv, mt, *_batch(10 * step + rank), mode=mode, gather=True)
        out[mode] = (mv.features, mt.features)

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


def test_memories_stay_identical_across_two_gloo_ranks(tmp_path):
    """One pair of gloo ranks: PrototypicalMemory.update(gather=True), update_memories in every
    PMM mode, and run_on_main_and_share with a failure on the main rank."""
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
    for mode in PMM_MODES:
        # identical on both ranks and equal to one process updating with both ranks' batches
        mv, mt = _memories()
        for step in range(2):
            parts = [_batch(10 * step + r) for r in range(2)]
            cat = [torch.cat([p[k] for p in parts]) for k in range(4)]
            update_memories(mv, mt, *cat, mode=mode, gather=False)
        for k, ref in enumerate((mv.features, mt.features)):
            assert torch.equal(r0[mode][k], r1[mode][k]), mode
            torch.testing.assert_close(r0[mode][k], ref, rtol=0, atol=1e-6)
    assert r0["error"] == "ValueError: clustering exploded"
    assert r1["error"] == (
        "RuntimeError: test clustering failed on the main process: ValueError: clustering exploded"
    )
    assert r0["shared"] == r1["shared"] == ("labels of rank", 0)
