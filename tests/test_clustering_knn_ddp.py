"""The exact kNN split across two gloo ranks (each its slice of query rows, then gathered) gives
the single-process ranking, hence identical pseudo labels."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastreid_ext.clustering import distributed_exact_knn, exact_knn, row_slices


def _features() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((60, 32))
    x = centers[rng.integers(0, 60, 401)] + 0.7 * rng.standard_normal((401, 32))
    x[200:230] = x[200]  # a run of duplicates across the two ranks' slice border
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ranking = distributed_exact_knn(_features(), 30)
    np.save(os.path.join(out_dir, f"rank{rank}.npy"), ranking)
    dist.barrier()
    dist.destroy_process_group()


def test_row_slices_cover_every_row_once():
    assert row_slices(401, 2) == [(0, 200), (200, 401)]
    assert row_slices(5, 3) == [(0, 2), (2, 3), (3, 5)]
    with pytest.raises(ValueError, match="world size"):
        row_slices(5, 0)


def test_without_a_process_group_it_is_the_exact_knn():
    x = _features()
    assert np.array_equal(distributed_exact_knn(x, 30), exact_knn(x, 30))


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_ranking(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npy") for r in (0, 1))
    expected = exact_knn(_features(), 30)
    assert np.array_equal(r0, expected) and np.array_equal(r1, expected)
    assert list(expected[229][:30]) == list(range(200, 230))  # the duplicates, by index
