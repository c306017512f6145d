"""What a gallery index is built from: a folder of images (recursively), a list of image files,
or a split of any registered dataset (text-image or visible-infrared)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from fastreid.config import CfgNode
from fastreid.data.datasets import DATASET_REGISTRY

from ..data.text_image import dataset_root
from ..data.vi.base import MODALITY_NAMES
from ..registry import lookup

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "folder_source",
    "paths_source",
    "dataset_source",
]

#: Files a folder source takes (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass
class ImageSource:
    """The rows of a gallery, in order.

    Attributes:
        paths: absolute image paths ``[N]``.
        roots: absolute folders the images were taken from (every path lies under one of them).
        pids: identity per row (a dataset split), else ``None``.
        camids: camera per row (visible-infrared datasets), else ``None``.
        modality: ``"visible"`` / ``"infrared"`` per row (visible-infrared datasets), else
            ``None`` (then the modality of a visible-infrared model is given when encoding).
        description: how the rows were chosen, recorded in the index's meta.
    """

    paths: List[str]
    roots: List[str]
    pids: Optional[List[int]] = None
    camids: Optional[List[int]] = None
    modality: Optional[List[str]] = None
    description: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


def _minimal_roots(folders: Sequence[str]) -> List[str]:
    """The distinct folders without those inside another one of them."""
    out: List[str] = []
    for folder in sorted(set(folders)):
        if not any(folder == r or folder.startswith(r.rstrip(os.sep) + os.sep) for r in out):
            out.append(folder)
    return out


def folder_source(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageSource:
    """Every image file under ``folder`` (recursively, symlinked folders not followed; sorted
    by path)."""
    root = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    exts = tuple(e.lower() for e in extensions)
    paths = []
    for current, dirs, names in os.walk(root):
        dirs.sort()
        paths.extend(os.path.join(current, n) for n in names if n.lower().endswith(exts))
    paths.sort()
    if not paths:
        raise ValueError(f"image folder '{folder}' holds no image file ({', '.join(exts)})")
    return ImageSource(paths, [root], description={"type": "folder", "folder": root})


def paths_source(paths: Sequence[str]) -> ImageSource:
    """The image files ``paths`` in order; the roots are their folders."""
    if isinstance(paths, str):
        raise TypeError("paths must be a sequence of file paths, not one string")
    out = [os.path.abspath(os.path.expanduser(str(p))) for p in paths]
    if not out:
        raise ValueError("no image paths given")
    for i, p in enumerate(out):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"paths[{i}]: image file '{p}' does not exist")
    roots = _minimal_roots([os.path.dirname(p) for p in out])
    return ImageSource(out, roots, description={"type": "paths", "count": len(out)})


def _text_image_rows(data: Any, split: str) -> tuple:
    if split == "train":
        seen: Dict[int, Any] = {}
        for pair in data.train:
            seen.setdefault(pair.image_id, pair)
        rows = [seen[i] for i in sorted(seen)]
        return [p.img_path for p in rows], [int(p.pid) for p in rows], None, None
    s = data.split(split)  # ValueError for a missing 'val'
    return list(s.img_paths), [int(p) for p in s.image_pids], None, None


def _vi_rows(data: Any, cfg: CfgNode, split: str) -> tuple:
    if split == "train":
        images = list(data.train_visible) + list(data.train_infrared)
    elif split == "test":
        vi = cfg.TEST.VI
        tasks = vi.SYSU_SETTINGS if data.protocol == "sysu" else vi.REGDB_DIRECTIONS
        images = data.evaluation_plan(list(tasks), vi.TRIALS).images
    else:
        raise ValueError(f"{type(data).__name__} has no '{split}' split: use 'train' or 'test'")
    return (
        [x.img_path for x in images],
        [int(x.pid) for x in images],
        [int(x.camid) for x in images],
        [MODALITY_NAMES[x.modality] for x in images],
    )


def dataset_source(
    cfg: CfgNode, name: str, split: str = "test", root: Optional[str] = None
) -> ImageSource:
    """The images of split ``split`` of the registered dataset ``name`` under ``root`` (default
    ``DATASETS.ROOT``, else ``$FASTREID_DATASETS``, else ``datasets``).

    Text-image datasets: the gallery images of ``test`` / ``val``; for ``train`` every training
    image once. Visible-infrared datasets: for ``test`` every image the evaluator encodes (queries
    and the galleries of ``TEST.VI``'s settings and trials), each with its modality and camera;
    for ``train`` both modalities' training images.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cls = lookup(DATASET_REGISTRY, name, "dataset")
    base = root or dataset_root(cfg)
    if hasattr(cls, "evaluation_plan") and hasattr(cls, "from_config"):
        data = cls.from_config(cfg, base)
        paths, pids, camids, modality = _vi_rows(data, cfg, split)
    else:
        data = cls(root=base)
        paths, pids, camids, modality = _text_image_rows(data, split)
    if not paths:
        raise ValueError(f"dataset {name} split '{split}' under '{base}' has no image")
    folder = os.path.abspath(getattr(data, "dataset_dir", "") or os.path.commonpath(paths))
    paths = [os.path.abspath(p) for p in paths]
    roots = [folder] if all(p.startswith(folder + os.sep) for p in paths) else []
    roots = roots or _minimal_roots([os.path.dirname(p) for p in paths])
    description = {
        "type": "dataset",
        "dataset": name,
        "split": split,
        "root": os.path.abspath(base),
    }
    return ImageSource(paths, roots, pids, camids, modality, description)
