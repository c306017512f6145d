"""Records shared by the visible-infrared datasets: images, retrieval tasks and evaluation plans."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np

from ..validation import DatasetFormatError

__all__ = [
    "VISIBLE",
    "INFRARED",
    "MODALITY_NAMES",
    "IMAGE_EXTENSIONS",
    "VIDatasetError",
    "VIImage",
    "VIRetrievalTask",
    "VIEvaluationPlan",
    "list_images",
    "contiguous_labels",
]

#: Modality flags carried by every image (and by every test batch, so models can pick a stem).
VISIBLE, INFRARED = 0, 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}
#: Files listed in an identity folder; anything else in the folder is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class VIDatasetError(DatasetFormatError):
    """A visible-infrared dataset folder or index file does not follow the expected layout; the
    message names the file or folder and, for entry-level problems, the line or identity. A
    :class:`~fastreid_ext.data.validation.DatasetFormatError`, as the text-image datasets'."""


@dataclass(frozen=True)
class VIImage:
    """One image of a visible-infrared dataset.

    Attributes:
        img_path: path of the image file.
        pid: identity as written in the dataset (SYSU folder name, RegDB index label).
        camid: camera (SYSU 1..6; RegDB 1 = visible, 2 = thermal).
        modality: :data:`VISIBLE` or :data:`INFRARED`.
        label: contiguous training label ``0..num_train_pids-1`` (training images), else -1.
    """

    img_path: str
    pid: int
    camid: int
    modality: int
    label: int = -1


@dataclass
class VIRetrievalTask:
    """One evaluation setting: queries against one or more gallery draws (trials).

    Attributes:
        name: e.g. ``"all-single"``, ``"indoor-multi"`` (SYSU) or ``"v2i"``, ``"i2v"`` (RegDB).
        protocol: ``"sysu"`` (camera 3 / camera 2 exclusion, identity-deduplicated CMC) or
            ``"regdb"`` (standard CMC); see :mod:`fastreid_ext.evaluation.vi_metrics`.
        query: indices into :attr:`VIEvaluationPlan.images`, ``[Nq]``.
        galleries: one index array per trial; metrics are averaged over them.
    """

    name: str
    protocol: str
    query: np.ndarray
    galleries: List[np.ndarray]


@dataclass
class VIEvaluationPlan:
    """Every distinct test image once (encode each only once) and the tasks that index them."""

    images: List[VIImage] = field(default_factory=list)
    tasks: List[VIRetrievalTask] = field(default_factory=list)


def list_images(folder: str) -> List[str]:
    """Sorted paths of the image files directly inside ``folder`` (``[]`` if it is missing)."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, n) for n in names]


def contiguous_labels(pids: Sequence[int]) -> dict:
    """Map the distinct pids, in ascending order, to ``0..n-1``."""
    return {pid: label for label, pid in enumerate(sorted(set(pids)))}
