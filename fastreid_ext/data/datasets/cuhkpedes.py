"""CUHK-PEDES (Li et al., CVPR 2017): ``CUHK-PEDES/{reid_raw.json, imgs/}``, train/val/test splits."""

from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from .base import TextImageDataset

__all__ = ["CUHKPEDES"]


@DATASET_REGISTRY.register()
class CUHKPEDES(TextImageDataset):
    """CUHK-PEDES: 13,003 ids, 40,206 images, 80,412 captions (about 2 per image).

    ``reid_raw.json`` entries hold ``id`` (1..13003), ``split`` (train/val/test), ``captions``,
    ``file_path`` (relative to ``imgs/``, e.g. ``train_query/p11600_s14885.jpg``) and
    ``processed_tokens`` (not used). Some downloads name the file ``CUHK-PEDES.json``; both are
    accepted. Training pids are ``id - 1`` as in IRRA (ids are contiguous from 1).
    """

    dataset_folder = "CUHK-PEDES"
    annotation_files = ("reid_raw.json", "CUHK-PEDES.json")
    image_key = "file_path"
