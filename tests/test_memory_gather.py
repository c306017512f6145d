"""PrototypicalMemory's distributed update in the fast tier: with a stubbed two-rank ``comm``
every rank applies the batches of all ranks, in rank order, so the memories stay identical (the
slow tier checks the same with real gloo ranks in tests/test_cpcl_memory.py)."""

from __future__ import annotations

from typing import List, Tuple

import pytest
import torch

import fastreid_ext.modeling.memory as memory_mod
from fastreid_ext.modeling.memory import PrototypicalMemory

D, K, MU = 8, 4, 0.3


def _formula(start: torch.Tensor, feats, labels, hard: bool = False) -> torch.Tensor:
    """``M_y <- mu M_y + (1 - mu) x / |x|``, renormalised, sample by sample in order (``hard``:
    once per label with its sample of least cosine to ``M_y``, ties to the first)."""
    m = torch.nn.functional.normalize(start, dim=1)
    pairs: List[Tuple[int, torch.Tensor]] = [
        (int(y), x) for x, y in zip(feats, labels) if int(y) >= 0
    ]
    if hard:
        chosen = {}
        for y, x in pairs:
            cos = float(x / x.norm() @ m[y])
            if y not in chosen or cos < chosen[y][0]:
                chosen[y] = (cos, x)
        pairs = [(y, chosen[y][1]) for y in sorted(chosen)]
    for y, x in pairs:
        m[y] = MU * m[y] + (1 - MU) * x / x.norm()
        m[y] = m[y] / m[y].norm()
    return m


def _data():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(K, D, generator=g)
    rank0 = (torch.randn(6, D, generator=g) * 2, torch.tensor([0, 1, -1, 2, 0, 3]))
    rank1 = (torch.randn(5, D, generator=g) * 3, torch.tensor([3, 3, 1, -1, 0]))
    return start, rank0, rank1


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("rank", [0, 1])
def test_update_applies_every_ranks_batch_in_rank_order(monkeypatch, rank, hard):
    start, rank0, rank1 = _data()
    mine = (rank0, rank1)[rank]
    calls = []

    def all_gather(obj):
        calls.append(obj)
        return [rank0, rank1]  # what every rank receives, in rank order

    monkeypatch.setattr(memory_mod.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(memory_mod.comm, "all_gather", all_gather)
    memory = PrototypicalMemory(D, MU)
    memory.reset(start)
    memory.update(*mine, hard=hard)
    assert len(calls) == 1 and torch.equal(calls[0][1], mine[1])
    feats, labels = torch.cat([rank0[0], rank1[0]]), torch.cat([rank0[1], rank1[1]])
    expected = _formula(start, feats, labels, hard)
    torch.testing.assert_close(memory.features, expected, rtol=0, atol=1e-6)

    # gather=False: this rank's batch only, which is another memory
    local = PrototypicalMemory(D, MU)
    local.reset(start)
    local.update(*mine, gather=False, hard=hard)
    assert len(calls) == 1
    torch.testing.assert_close(local.features, _formula(start, *mine, hard), rtol=0, atol=1e-6)
    assert not torch.allclose(local.features, memory.features, atol=1e-4)


def test_single_process_update_does_not_gather(monkeypatch):
    def all_gather(obj):
        raise AssertionError("all_gather called in a one-process run")

    monkeypatch.setattr(memory_mod.comm, "all_gather", all_gather)
    start, rank0, _ = _data()
    memory = PrototypicalMemory(D, MU)
    memory.reset(start)
    memory.update(*rank0)
    torch.testing.assert_close(memory.features, _formula(start, *rank0), rtol=0, atol=1e-6)
