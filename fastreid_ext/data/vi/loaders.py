"""Torch datasets and loaders for visible-infrared ReID (paired training items, test images)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from fastreid.config import CfgNode
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.utils import comm
from torch.utils.data import DataLoader, Dataset

from ...registry import lookup
from ..samplers import InferenceBatchSampler
from ..text_image import ChainedLoader, build_batch_loader, dataset_root, read_image
from .base import INFRARED, VISIBLE, VIEvaluationPlan, VIImage
from .sampler import CrossModalIdentitySampler
from .transforms import build_vi_transforms

__all__ = [
    "load_vi_dataset",
    "CrossModalPairSet",
    "VITestImageSet",
    "build_vi_train_set",
    "build_vi_sampler",
    "build_vi_loader",
    "build_vi_test_loader",
]


def load_vi_dataset(name: str, cfg: CfgNode, key: str = "DATASETS.NAMES"):
    """Instantiate a registered visible-infrared dataset (one with ``evaluation_plan``)."""
    cls = lookup(DATASET_REGISTRY, name, key)
    if not hasattr(cls, "evaluation_plan") or not hasattr(cls, "from_config"):
        raise KeyError(
            f"{key}: '{name}' is not a visible-infrared dataset (use SYSUMM01CrossModal or "
            "RegDBCrossModal; fast-reid's SYSU_mm is train-only and has no VI protocol)"
        )
    return cls.from_config(cfg, dataset_root(cfg))


class CrossModalPairSet(Dataset):
    """Item ``[i, j]`` = visible image i and infrared image j (from
    :class:`CrossModalIdentitySampler`): ``{"vis_images": [V, 3, H, W]`` (one tensor per visible
    transform, e.g. CAJ's plain and channel-exchanged views), ``"ir_images": [3, H, W]``,
    ``"vis_targets"``, ``"ir_targets"`` (training labels), ``"vis_camids"``, ``"ir_camids"``,
    ``"vis_indices"``, ``"ir_indices"}``.

    Attributes:
        num_classes: number of training labels (max label + 1).
    """

    def __init__(
        self,
        visible: Sequence[VIImage],
        infrared: Sequence[VIImage],
        visible_transforms: Sequence[Callable],
        infrared_transform: Callable,
    ) -> None:
        if not visible or not infrared:
            raise ValueError("CrossModalPairSet needs visible and infrared images")
        if not visible_transforms:
            raise ValueError("CrossModalPairSet needs at least one visible transform")
        self.visible, self.infrared = list(visible), list(infrared)
        self.visible_transforms = list(visible_transforms)
        self.infrared_transform = infrared_transform
        self.visible_labels = [x.label for x in self.visible]
        self.infrared_labels = [x.label for x in self.infrared]
        if min(self.visible_labels + self.infrared_labels) < 0:
            raise ValueError("CrossModalPairSet: every training image needs a label >= 0")
        self.num_classes = max(self.visible_labels + self.infrared_labels) + 1

    def __len__(self) -> int:
        return max(len(self.visible), len(self.infrared))

    def __getitem__(self, pair: Sequence[int]) -> Dict[str, Any]:
        i, j = int(pair[0]), int(pair[1])
        v, r = self.visible[i], self.infrared[j]
        vis = read_image(v.img_path)
        return {
            "vis_images": torch.stack([t(vis) for t in self.visible_transforms]),
            "ir_images": self.infrared_transform(read_image(r.img_path)),
            "vis_targets": v.label,
            "ir_targets": r.label,
            "vis_camids": v.camid,
            "ir_camids": r.camid,
            "vis_indices": i,
            "ir_indices": j,
        }


class VITestImageSet(Dataset):
    """Test images: ``{"images": [3, H, W], "targets": pid, "camids", "modality", "indices"}``
    where ``indices`` are the images' positions in an evaluation plan."""

    def __init__(
        self, images: Sequence[VIImage], transform: Callable, indices: Sequence[int]
    ) -> None:
        if len(images) != len(indices):
            raise ValueError("VITestImageSet: one index per image is needed")
        self.images, self.transform, self.indices = list(images), transform, list(indices)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> Dict[str, Any]:
        x = self.images[k]
        return {
            "images": self.transform(read_image(x.img_path)),
            "targets": x.pid,
            "camids": x.camid,
            "modality": x.modality,
            "indices": int(self.indices[k]),
        }


def build_vi_loader(cfg: CfgNode, dataset: Dataset, batch_sampler: Any) -> DataLoader:
    """A DataLoader with ``collate`` and ``DATALOADER.NUM_WORKERS`` forked workers."""
    return build_batch_loader(cfg, dataset, batch_sampler)


def build_vi_train_set(cfg: CfgNode, is_train: bool = True) -> CrossModalPairSet:
    """The training pairs of the single VI dataset in ``DATASETS.NAMES``, with the train
    transforms (one per visible view of ``INPUT.VI.VISIBLE_AUG_VIEWS``) or, with
    ``is_train=False``, the test transform (one visible view)."""
    names = list(cfg.DATASETS.NAMES)
    if len(names) != 1:
        raise ValueError(
            f"DATASETS.NAMES must name exactly one visible-infrared dataset, got {names}"
        )
    data = load_vi_dataset(names[0], cfg)
    if comm.is_main_process() and is_train:
        data.show_summary()
    if is_train:
        views = range(len(cfg.INPUT.VI.VISIBLE_AUG_VIEWS))
        vis_t = [build_vi_transforms(cfg, True, VISIBLE, v) for v in views]
        ir_t = build_vi_transforms(cfg, True, INFRARED)
    else:
        vis_t, ir_t = [build_vi_transforms(cfg, False)], build_vi_transforms(cfg, False)
    return CrossModalPairSet(data.train_visible, data.train_infrared, vis_t, ir_t)


def build_vi_sampler(
    cfg: CfgNode, train_set: CrossModalPairSet, seed: Optional[int] = None
) -> CrossModalIdentitySampler:
    """P x K sampler: K = ``DATALOADER.NUM_INSTANCE``, P = ``SOLVER.IMS_PER_BATCH / K`` (the
    batch size counts pairs, as CSDN's ``--batch-size 32`` with ``--num_pos 4``)."""
    k = cfg.DATALOADER.NUM_INSTANCE
    if k < 1 or cfg.SOLVER.IMS_PER_BATCH % k != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} must be a multiple of "
            f"DATALOADER.NUM_INSTANCE={k}"
        )
    return CrossModalIdentitySampler(
        train_set.visible_labels,
        train_set.infrared_labels,
        cfg.SOLVER.IMS_PER_BATCH // k,
        k,
        seed=max(cfg.SEED, 0) if seed is None else seed,
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
    )


def build_vi_test_loader(cfg: CfgNode, plan: VIEvaluationPlan) -> ChainedLoader:
    """Rank-sharded loaders over the plan's visible images, then its infrared images; every
    batch holds one modality (so a two-stream model can pick its stem)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    bs = max(1, cfg.TEST.IMS_PER_BATCH // world)
    transform = build_vi_transforms(cfg, is_train=False)
    loaders = []
    for modality in (VISIBLE, INFRARED):
        idx = [i for i, x in enumerate(plan.images) if x.modality == modality]
        if not idx:
            continue
        ds = VITestImageSet([plan.images[i] for i in idx], transform, idx)
        loaders.append(build_vi_loader(cfg, ds, InferenceBatchSampler(len(ds), bs, rank, world)))
    return ChainedLoader(loaders)
