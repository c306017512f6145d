"""ICFG-PEDES (Ding et al., 2021): ``ICFG-PEDES/{ICFG-PEDES.json, imgs/{train,test}/}``, no val split."""

from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from .base import TextImageDataset

__all__ = ["ICFGPEDES"]


@DATASET_REGISTRY.register()
class ICFGPEDES(TextImageDataset):
    """ICFG-PEDES: 4,102 ids, 54,522 images with one caption each, splits train/test only.

    The annotation file is ``ICFG-PEDES.json`` (IRRA/SSAN code) or ``ICFG_PEDES.json`` (their
    READMEs); both are accepted, the first found wins. Entries use ``file_path`` relative to
    ``imgs/`` (``train/...`` or ``test/...``, MSMT17's folders, which are not the split). ``val`` is
    ``None``.
    """

    dataset_folder = "ICFG-PEDES"
    annotation_files = ("ICFG-PEDES.json", "ICFG_PEDES.json")
    image_key = "file_path"
