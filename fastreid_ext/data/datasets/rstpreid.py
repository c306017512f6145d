"""RSTPReid (Zhu et al., ACM MM 2021): ``RSTPReid/{data_captions.json, imgs/}`` with ``img_path`` keys."""

from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from .base import TextImageDataset

__all__ = ["RSTPReid"]


@DATASET_REGISTRY.register()
class RSTPReid(TextImageDataset):
    """RSTPReid: 4,101 ids x 5 images x 2 captions; train 3,701 / val 200 / test 200 ids.

    ``data_captions.json`` entries hold ``id``, ``img_path`` (relative to the flat ``imgs/``),
    ``captions`` and ``split`` (train/val/test).
    """

    dataset_folder = "RSTPReid"
    annotation_files = ("data_captions.json",)
    image_key = "img_path"
