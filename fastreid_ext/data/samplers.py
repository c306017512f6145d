"""Epoch-indexed, rank-aware batch samplers: the batch order is a pure function of (seed, epoch)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, List, Sequence

import numpy as np

__all__ = ["EpochBatchSampler", "RandomEpochBatchSampler", "InferenceBatchSampler"]


class EpochBatchSampler(ABC):
    """Base class: yields this rank's share of every global batch of one epoch.

    ``total_batch_size`` is the batch summed over ranks; each rank receives
    ``total_batch_size // world_size`` indices per step. Calling :meth:`set_epoch` selects the
    epoch; the same (seed, epoch) gives the same batches on every run, which makes resumed
    training identical to uninterrupted training.
    """

    def __init__(
        self, num_samples: int, total_batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if total_batch_size % world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={total_batch_size} must be divisible by the world size "
                f"{world_size}"
            )
        if num_samples < total_batch_size:
            raise ValueError(
                f"The training set has {num_samples} samples, fewer than one batch "
                f"(SOLVER.IMS_PER_BATCH={total_batch_size})"
            )
        self.num_samples = num_samples
        self.total_batch_size = total_batch_size
        self.batch_size = total_batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    @abstractmethod
    def global_batches(self) -> List[np.ndarray]:
        """All global batches of the current epoch (identical on every rank)."""

    def __iter__(self) -> Iterator[List[int]]:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.global_batches():
            yield batch[lo:hi].tolist()

    def __len__(self) -> int:
        return self.num_samples // self.total_batch_size


class RandomEpochBatchSampler(EpochBatchSampler):
    """A fresh random permutation every epoch, the incomplete last batch dropped (IRRA's sampler)."""

    def global_batches(self) -> List[np.ndarray]:
        perm = self._rng().permutation(self.num_samples)
        n = len(self) * self.total_batch_size
        return list(perm[:n].reshape(len(self), self.total_batch_size))


class InferenceBatchSampler:
    """Contiguous, unshuffled shard of ``range(num_samples)`` for this rank, in batches."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        shard = (num_samples + world_size - 1) // world_size
        self.indices: Sequence[int] = range(
            min(rank * shard, num_samples), min((rank + 1) * shard, num_samples)
        )
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[List[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield list(self.indices[start : start + self.batch_size])

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size
