"""Weakly supervised training data: image-caption pairs without identities, plus pseudo labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from fastreid.config import CfgNode
from fastreid.utils import comm
from torch.utils.data import Dataset

from fastreid_ext.data.text_image import load_text_image_dataset, read_image
from fastreid_ext.text.mlm import mask_tokens
from fastreid_ext.text.tokenizer import ClipTokenizer

__all__ = ["WeakPair", "build_weak_pairs", "CPCLTrainSet"]


@dataclass(frozen=True, slots=True)
class WeakPair:
    """One caption of one training image, without any identity.

    Attributes:
        image_id: index of the image, unique over all training datasets (captions of one image
            share it).
        img_path: image file.
        caption: raw caption text.
    """

    image_id: int
    img_path: str
    caption: str


def build_weak_pairs(cfg: CfgNode) -> List[WeakPair]:
    """The training pairs of ``cfg.DATASETS.NAMES`` in dataset order, identities stripped.

    The annotation parser reads the json ``id`` fields (they define the test identities); the
    training pairs keep only (image, caption), so nothing downstream can see a training id.
    """
    pairs: List[WeakPair] = []
    image_offset = 0
    for name in cfg.DATASETS.NAMES:
        data = load_text_image_dataset(name, cfg)
        if comm.is_main_process():
            data.show_summary()
        pairs.extend(WeakPair(p.image_id + image_offset, p.img_path, p.caption) for p in data.train)
        image_offset += data.num_train_images
        del data
    return pairs


class CPCLTrainSet(Dataset):
    """The pairs of one epoch with their pseudo labels.

    Item: ``{"images": [3,H,W] in [0,255], "caption_ids": [L], "image_labels": int,
    "text_labels": int, "image_ids": int, "pair_indices": int, "indices": int}`` (labels are
    pseudo labels, ``-1`` = outlier) plus ``"mlm_ids"``/``"mlm_labels"`` [L] when ``mlm``.

    Args:
        pairs: all training pairs (the clustering order).
        transform, tokenizer: training image transform and caption tokenizer.
        image_labels, text_labels: ``[len(pairs)]`` pseudo labels (default: all -1).
        indices: the pairs that train this epoch (default: all), as positions in ``pairs``.
    """

    def __init__(
        self,
        pairs: Sequence[WeakPair],
        transform: Callable,
        tokenizer: ClipTokenizer,
        image_labels: Optional[Sequence[int]] = None,
        text_labels: Optional[Sequence[int]] = None,
        indices: Optional[Sequence[int]] = None,
        mlm: bool = False,
        mlm_prob: float = 0.15,
    ) -> None:
        self.pairs = list(pairs)
        # every item (a type check per pair: about a millisecond per 20k pairs)
        bad = next((k for k, p in enumerate(self.pairs) if type(p) is not WeakPair), None)
        if bad is not None:
            raise TypeError(
                "CPCLTrainSet takes WeakPair items (pairs without identities); item "
                f"{bad} is a {type(self.pairs[bad]).__name__}"
            )
        n = len(self.pairs)
        self.image_labels = self._labels(image_labels, n, "image_labels")
        self.text_labels = self._labels(text_labels, n, "text_labels")
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError("CPCLTrainSet: indices out of range of the pairs")
        self.transform = transform
        self.tokenizer = tokenizer
        self.mlm = mlm
        self.mlm_prob = mlm_prob
        # no identity classifier: the trainer's auto-scaling of NUM_CLASSES sees 0
        self.num_classes = 0

    @staticmethod
    def _labels(labels: Optional[Sequence[int]], n: int, name: str) -> np.ndarray:
        if labels is None:
            return np.full(n, -1, dtype=np.int64)
        out = np.asarray(labels, dtype=np.int64)
        if out.shape != (n,):
            raise ValueError(f"CPCLTrainSet: {name} must have one entry per pair ({n})")
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        k = int(self.indices[index])
        pair = self.pairs[k]
        ids = self.tokenizer.encode(pair.caption)
        item = {
            "images": self.transform(read_image(pair.img_path)),
            "caption_ids": ids,
            "image_labels": int(self.image_labels[k]),
            "text_labels": int(self.text_labels[k]),
            "image_ids": pair.image_id,
            "pair_indices": k,
            "indices": index,
        }
        if self.mlm:
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
            item["mlm_ids"], item["mlm_labels"] = mask_tokens(ids, gen, prob=self.mlm_prob)
        return item
