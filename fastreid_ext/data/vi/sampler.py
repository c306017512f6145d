"""Cross-modal identity sampler (AGW's ``IdentitySampler``) as an epoch-deterministic batch sampler."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from ..samplers import EpochBatchSampler

__all__ = ["CrossModalIdentitySampler"]


class CrossModalIdentitySampler(EpochBatchSampler):
    """Batches of P identities x K (visible, infrared) pairs of the same identity.

    Each element is a pair ``[visible index, infrared index]``; a dataset such as
    :class:`~fastreid_ext.data.vi.loaders.CrossModalPairSet` turns it into one visible and one
    infrared image, so a batch holds K visible and K infrared images of each of P identities.

    Per global batch (AGW / CAJ / CSDN): P labels drawn without replacement among the labels
    present in both modalities; for each, K visible and K infrared indices drawn with
    replacement. An epoch has ``max(Nv, Nr) // (P * K) + 1`` batches. Batches are identity-major
    (the K pairs of an identity are consecutive), so rank r of W takes identities
    ``[r * P / W, (r + 1) * P / W)`` of every batch whole; P must be divisible by W.
    The draw is a pure function of (seed, epoch).

    Args:
        visible_labels: training label of every visible image, ``[Nv]``.
        infrared_labels: training label of every infrared image, ``[Nr]``.
        num_identities: P.
        num_instances: K (per modality).
        seed, rank, world_size: as :class:`EpochBatchSampler`.
    """

    def __init__(
        self,
        visible_labels: Sequence[int],
        infrared_labels: Sequence[int],
        num_identities: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_identities < 1 or num_instances < 1:
            raise ValueError(
                f"P (identities per batch) and K (DATALOADER.NUM_INSTANCE) must be >= 1, got "
                f"P={num_identities}, K={num_instances}"
            )
        if num_identities % world_size != 0:
            raise ValueError(
                f"{num_identities} identities per batch (SOLVER.IMS_PER_BATCH / "
                f"DATALOADER.NUM_INSTANCE) must be divisible by the world size {world_size}"
            )
        self.visible_pos = self._positions(visible_labels)
        self.infrared_pos = self._positions(infrared_labels)
        self.labels = np.asarray(sorted(set(self.visible_pos) & set(self.infrared_pos)))
        if len(self.labels) < num_identities:
            raise ValueError(
                f"{num_identities} identities per batch requested but only {len(self.labels)} "
                "labels have both visible and infrared images"
            )
        self.num_identities, self.num_instances = num_identities, num_instances
        super().__init__(
            max(len(visible_labels), len(infrared_labels)),
            num_identities * num_instances,
            seed,
            rank,
            world_size,
        )

    @staticmethod
    def _positions(labels: Sequence[int]) -> Dict[int, np.ndarray]:
        out: Dict[int, List[int]] = {}
        for i, y in enumerate(labels):
            out.setdefault(int(y), []).append(i)
        return {y: np.asarray(v, dtype=np.int64) for y, v in out.items()}

    def __len__(self) -> int:
        return self.num_samples // self.total_batch_size + 1

    def global_batches(self) -> List[np.ndarray]:
        """``len(self)`` arrays of shape ``[P * K, 2]`` (visible index, infrared index)."""
        rng = self._rng()
        p, k = self.num_identities, self.num_instances
        batches = []
        for _ in range(len(self)):
            ids = rng.choice(self.labels, p, replace=False)
            pairs = np.empty((p * k, 2), dtype=np.int64)
            for i, y in enumerate(ids):
                pairs[i * k : (i + 1) * k, 0] = rng.choice(self.visible_pos[int(y)], k)
                pairs[i * k : (i + 1) * k, 1] = rng.choice(self.infrared_pos[int(y)], k)
            batches.append(pairs)
        return batches
