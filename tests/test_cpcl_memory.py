"""PrototypicalMemory (CPCL's PMM): centroids, the momentum update against the per-sample formula,
state dicts with a changing number of clusters, and identical memories across two gloo ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

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


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    memory = PrototypicalMemory(8, 0.3)
    memory.reset(torch.randn(4, 8))  # same start on both ranks
    for step in range(3):
        g = torch.Generator().manual_seed(100 * step + rank)  # different data per rank
        feats = torch.randn(5, 8, generator=g)
        labels = torch.randint(-1, 4, (5,), generator=g)
        memory.update(feats, labels, gather=True)
    torch.save(memory.features, os.path.join(out_dir, f"memory_rank{rank}.pt"))
    dist.destroy_process_group()


def test_memories_stay_identical_across_two_gloo_ranks(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    m0 = torch.load(tmp_path / "memory_rank0.pt")
    m1 = torch.load(tmp_path / "memory_rank1.pt")
    assert torch.equal(m0, m1)
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
    torch.testing.assert_close(m0, ref.features, rtol=0, atol=1e-6)
    assert not torch.equal(m0, start)
