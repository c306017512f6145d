"""Torch datasets and loaders for text-image ReID (training pairs, gallery images, query captions)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from fastreid.config import CfgNode
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.utils import comm
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..registry import lookup
from ..text.mlm import mask_tokens
from ..text.tokenizer import ClipTokenizer
from .samplers import EpochBatchSampler, InferenceBatchSampler, RandomEpochBatchSampler
from .transforms import build_image_transforms

__all__ = [
    "dataset_root",
    "load_text_image_dataset",
    "read_image",
    "TextImageTrainSet",
    "GalleryImageSet",
    "QueryCaptionSet",
    "collate",
    "build_batch_loader",
    "build_t2i_train_loader",
    "build_t2i_test_loaders",
    "ChainedLoader",
]

logger = logging.getLogger(__name__)


def dataset_root(cfg: Optional[CfgNode] = None) -> str:
    """``DATASETS.ROOT`` if set, else fast-reid's ``$FASTREID_DATASETS``, else ``datasets``."""
    if cfg is not None and cfg.DATASETS.ROOT:
        return cfg.DATASETS.ROOT
    return os.getenv("FASTREID_DATASETS", "datasets")


def load_text_image_dataset(name: str, cfg: Optional[CfgNode] = None, key: str = "DATASETS.NAMES"):
    """Instantiate a registered text-image dataset by name (parses annotations, reads no image)."""
    cls = lookup(DATASET_REGISTRY, name, key)
    return cls(root=dataset_root(cfg))


def read_image(path: str) -> Image.Image:
    """Open an RGB image, with an error naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise OSError(f"Cannot read image '{path}': {exc}") from exc


class TextImageTrainSet(Dataset):
    """One item per caption (IRRA): ``{"images": [3,H,W] in [0,255], "caption_ids": [L],
    "targets": pid, "image_ids": int, "indices": int}`` plus ``"mlm_ids"``/``"mlm_labels"`` [L]
    when ``mlm`` is on. Randomness (augmentation, MLM) uses the global torch RNG, which the
    trainer re-seeds at every epoch.

    ``labels`` overrides the identity targets (e.g. pseudo labels); by default the pairs' pids.
    """

    def __init__(
        self,
        pairs: Sequence[Any],
        transform: Callable,
        tokenizer: ClipTokenizer,
        mlm: bool = False,
        mlm_prob: float = 0.15,
        labels: Optional[Sequence[int]] = None,
    ) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.tokenizer = tokenizer
        self.mlm = mlm
        self.mlm_prob = mlm_prob
        self.labels = list(labels) if labels is not None else [p.pid for p in self.pairs]
        if len(self.labels) != len(self.pairs):
            raise ValueError("labels must have one entry per training pair")
        valid = [y for y in self.labels if y >= 0]
        self.num_classes = (max(valid) + 1) if valid else 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        pair = self.pairs[index]
        ids = self.tokenizer.encode(pair.caption)
        item = {
            "images": self.transform(read_image(pair.img_path)),
            "caption_ids": ids,
            "targets": self.labels[index],
            "image_ids": pair.image_id,
            "indices": index,
        }
        if self.mlm:
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
            item["mlm_ids"], item["mlm_labels"] = mask_tokens(ids, gen, prob=self.mlm_prob)
        return item


class GalleryImageSet(Dataset):
    """Gallery images of a retrieval split: ``{"images", "targets", "indices"}``."""

    def __init__(self, img_paths: Sequence[str], pids: Sequence[int], transform: Callable):
        self.img_paths, self.pids, self.transform = list(img_paths), list(pids), transform

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {
            "images": self.transform(read_image(self.img_paths[index])),
            "targets": self.pids[index],
            "indices": index,
        }


class QueryCaptionSet(Dataset):
    """Query captions of a retrieval split: ``{"caption_ids", "targets", "indices"}``."""

    def __init__(self, captions: Sequence[str], pids: Sequence[int], tokenizer: ClipTokenizer):
        self.captions, self.pids, self.tokenizer = list(captions), list(pids), tokenizer

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {
            "caption_ids": self.tokenizer.encode(self.captions[index]),
            "targets": self.pids[index],
            "indices": index,
        }


def collate(batch: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack tensors, turn ints into LongTensors, keep other values as lists."""
    out: Dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


def build_batch_loader(cfg: CfgNode, dataset: Dataset, batch_sampler: Any) -> DataLoader:
    """A DataLoader over ``dataset`` driven by ``batch_sampler``, with :func:`collate` and
    ``DATALOADER.NUM_WORKERS`` workers (forked on Linux). Every loader of this package uses it."""
    workers = cfg.DATALOADER.NUM_WORKERS
    # Processes started by ``launch`` (mp.spawn) default to "spawn" for their loader workers,
    # which re-import torch in every worker; fork them instead where the platform allows it.
    context = "fork" if workers > 0 and sys.platform.startswith("linux") else None
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu",
        multiprocessing_context=context,
    )


def build_t2i_train_loader(
    cfg: CfgNode, train_set: Dataset, sampler: Optional[EpochBatchSampler] = None
) -> DataLoader:
    """Loader over ``train_set`` driven by an epoch batch sampler (random by default)."""
    if sampler is None:
        sampler = RandomEpochBatchSampler(
            len(train_set),
            cfg.SOLVER.IMS_PER_BATCH,
            seed=max(cfg.SEED, 0),
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
        )
    return build_batch_loader(cfg, train_set, sampler)


class ChainedLoader:
    """Iterates several loaders one after another (gallery images, then query captions)."""

    def __init__(self, loaders: Sequence[DataLoader]) -> None:
        self.loaders = list(loaders)

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for loader in self.loaders:
            yield from loader


def build_t2i_test_loaders(cfg: CfgNode, split: Any) -> ChainedLoader:
    """Rank-sharded gallery-image and query-caption loaders of a :class:`RetrievalSplit`."""
    rank, world = comm.get_rank(), comm.get_world_size()
    bs = max(1, cfg.TEST.IMS_PER_BATCH // world)
    gallery = GalleryImageSet(split.img_paths, split.image_pids, build_image_transforms(cfg, False))
    queries = QueryCaptionSet(
        split.captions, split.caption_pids, ClipTokenizer(cfg.MODEL.CLIP.CONTEXT_LENGTH)
    )
    return ChainedLoader(
        [
            build_batch_loader(cfg, gallery, InferenceBatchSampler(len(gallery), bs, rank, world)),
            build_batch_loader(cfg, queries, InferenceBatchSampler(len(queries), bs, rank, world)),
        ]
    )
