"""RegDB (Nguyen et al., Sensors 2017) read from its released ``idx/`` split files."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from fastreid.config import CfgNode
from fastreid.data.datasets import DATASET_REGISTRY
from tabulate import tabulate

from ..validation import (
    check_relative_image_path,
    find_missing_files,
    find_split_conflict,
    missing_file_message,
)
from .base import (
    INFRARED,
    VISIBLE,
    VIDatasetError,
    VIEvaluationPlan,
    VIImage,
    VIRetrievalTask,
    contiguous_labels,
)

__all__ = ["RegDBCrossModal", "IndexLine", "read_index_lines", "regdb_identity", "REGDB_DIRECTIONS"]

logger = logging.getLogger(__name__)

#: Camera ids of the two modalities (one dual-camera rig); different ids as AGW's eval_regdb.
VISIBLE_CAMID, THERMAL_CAMID = 1, 2
#: Retrieval directions: visible queries against the thermal gallery, and the reverse.
REGDB_DIRECTIONS = ("v2i", "i2v")
#: The index files of a trial: (split, modality name, modality, camera id), in reading order.
INDEX_FILES = (
    ("train", "visible", VISIBLE, VISIBLE_CAMID),
    ("train", "thermal", INFRARED, THERMAL_CAMID),
    ("test", "visible", VISIBLE, VISIBLE_CAMID),
    ("test", "thermal", INFRARED, THERMAL_CAMID),
)


@dataclass(frozen=True)
class IndexLine:
    """One image line of an ``idx/*.txt`` file.

    Attributes:
        lineno: line number in the file (1-based).
        rel: the image path relative to the ``RegDB/`` folder, normalised.
        label: the integer label written after the path.
    """

    lineno: int
    rel: str
    label: int


def read_index_lines(path: str) -> List[IndexLine]:
    """Image lines of an ``idx/*.txt`` file: ``<path relative to the dataset folder> <int label>``
    per line (blank lines skipped).

    Paths are normalised with the text-image datasets' rule
    (:func:`~fastreid_ext.data.validation.check_relative_image_path`): absolute paths and paths
    that leave ``RegDB/`` anywhere (``../x`` as well as ``Visible/../../x``) are errors.

    Raises:
        VIDatasetError: naming the file and, for a bad line, its number.
    """
    if not os.path.isfile(path):
        raise VIDatasetError(f"RegDB index file not found: {path}")
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise VIDatasetError(
                    f"{path} line {lineno}: expected '<relative image path> <int label>', got "
                    f"{line.strip()!r}"
                )
            try:
                rel = check_relative_image_path(parts[0], "RegDB/")
            except ValueError as e:
                raise VIDatasetError(f"{path} line {lineno}: {e}") from None
            out.append(IndexLine(lineno, rel, int(parts[1])))
    if not out:
        raise VIDatasetError(f"{path}: no image listed")
    return out


def regdb_identity(rel: str) -> str:
    """The person of an image: its folder below the modality folder (``Visible/172/x.bmp`` and
    ``Thermal/172/y.bmp`` -> ``"172"``), or the path itself when there is no such folder.

    The labels of the index files cannot serve: they are split-local (each split may number its
    identities from 0, as the synthetic writer does), so equal train and test labels need not be
    the same person.
    """
    parts = rel.split("/")
    return "/".join(parts[1:-1]) if len(parts) >= 3 else rel


@DATASET_REGISTRY.register()
class RegDBCrossModal:
    """RegDB for visible-infrared ReID: ``<root>/RegDB/idx/{train,test}_{visible,thermal}_{t}.txt``
    (t = 1..10) listing images under ``<root>/RegDB/``.

    One model is trained per trial ``t`` (206 identities, 2,060 images per modality) and tested on
    the other 206 identities: visible-to-infrared (``v2i``: query = test visible, gallery = test
    thermal, 2,060 each) or infrared-to-visible (``i2v``: swapped). The gallery is the whole test
    set of the other modality; no sampling, one "trial" per direction. Training labels are the
    index-file labels mapped to ``0..n-1`` in ascending order (identity for the released files,
    whose labels are already contiguous).

    Checks at start-up, with the text-image datasets' rules (errors name the index file and line):
    image paths stay inside ``RegDB/`` (:func:`read_index_lines`); no person
    (:func:`regdb_identity`) is in both the training and the test files of the trial; every
    listed image file exists (``verify_images=False`` skips this, e.g. to read the index files
    on a machine without the images).
    """

    dataset_folder = "RegDB"
    protocol = "regdb"

    def __init__(
        self, root: str = "datasets", trial: int = 1, verify_images: bool = True, **kwargs
    ) -> None:
        if not 1 <= int(trial) <= 10:
            raise ValueError(f"DATASETS.VI.REGDB_TRIAL must be in 1..10, got {trial}")
        self.root = root
        self.trial = int(trial)
        self.dataset_dir = os.path.join(root, self.dataset_folder)
        if not os.path.isdir(self.dataset_dir):
            raise VIDatasetError(
                f"RegDB folder not found: {self.dataset_dir} (set DATASETS.ROOT to the folder "
                "that contains RegDB/)"
            )
        self.index_files: Dict[Tuple[str, str], str] = {
            (split, name): os.path.join(self.dataset_dir, "idx", f"{split}_{name}_{self.trial}.txt")
            for split, name, _, _ in INDEX_FILES
        }
        lines = {key: read_index_lines(path) for key, path in self.index_files.items()}
        self._check_identities_disjoint(lines)
        if verify_images:
            self._check_images_exist(lines)
        images = {
            (split, name): [
                VIImage(os.path.join(self.dataset_dir, x.rel), x.label, camid, modality)
                for x in lines[(split, name)]
            ]
            for split, name, modality, camid in INDEX_FILES
        }
        train_v, train_t = images[("train", "visible")], images[("train", "thermal")]
        self.test_visible = images[("test", "visible")]
        self.test_thermal = images[("test", "thermal")]
        common = {x.pid for x in train_v} & {x.pid for x in train_t}
        if not common:
            raise VIDatasetError(
                f"{self.dataset_dir}: trial {self.trial} has no training label in both modalities"
            )
        labels = contiguous_labels(common)
        self.train_visible = [self._relabel(x, labels) for x in train_v if x.pid in labels]
        self.train_infrared = [self._relabel(x, labels) for x in train_t if x.pid in labels]
        self.num_train_pids = len(labels)

    def _check_identities_disjoint(self, lines: Dict[Tuple[str, str], List[IndexLine]]) -> None:
        """A person listed in a training and a test file is an error naming both lines."""
        conflict = find_split_conflict(
            (regdb_identity(x.rel), split, (self.index_files[(split, name)], x.lineno, x.rel))
            for (split, name), entries in lines.items()
            for x in entries
        )
        if conflict is None:
            return
        path, lineno, rel = conflict.location
        first_path, first_lineno, first_rel = conflict.first_location
        raise VIDatasetError(
            f"{path} line {lineno}: identity {conflict.key!r} (image {rel!r}) is also in "
            f"{first_path} line {first_lineno} (image {first_rel!r}); the {conflict.split} and "
            f"{conflict.first_split} identities of a trial must differ (train/test leak)"
        )

    def _check_images_exist(self, lines: Dict[Tuple[str, str], List[IndexLine]]) -> None:
        """Every listed image file exists under ``RegDB/``; else an error naming the first
        missing image's file and line, with the count of the others."""
        missing = {
            key: [
                entries[i] for i in find_missing_files(self.dataset_dir, [x.rel for x in entries])
            ]
            for key, entries in lines.items()
        }
        total = sum(len(m) for m in missing.values())
        for key, entries in missing.items():
            if entries:
                raise VIDatasetError(
                    f"{self.index_files[key]} line {entries[0].lineno}: "
                    + missing_file_message(entries[0].rel, self.dataset_dir, total)
                )

    @staticmethod
    def _relabel(x: VIImage, labels: dict) -> VIImage:
        return VIImage(x.img_path, x.pid, x.camid, x.modality, labels[x.pid])

    @classmethod
    def from_config(cls, cfg: CfgNode, root: str) -> RegDBCrossModal:
        """Build the split ``DATASETS.VI.REGDB_TRIAL``."""
        return cls(root=root, trial=cfg.DATASETS.VI.REGDB_TRIAL)

    def query(self, direction: str = "v2i") -> List[VIImage]:
        """Test visible images (``v2i``) or test thermal images (``i2v``)."""
        self._check(direction)
        return self.test_visible if direction == "v2i" else self.test_thermal

    def gallery(self, direction: str = "v2i") -> List[VIImage]:
        """The other modality's whole test set."""
        self._check(direction)
        return self.test_thermal if direction == "v2i" else self.test_visible

    @staticmethod
    def _check(direction: str) -> None:
        if direction not in REGDB_DIRECTIONS:
            raise KeyError(
                f"TEST.VI.REGDB_DIRECTIONS entry '{direction}' must be one of {REGDB_DIRECTIONS}"
            )

    def evaluation_plan(self, directions: Sequence[str], num_trials: int = 1) -> VIEvaluationPlan:
        """Both test sets once and one task per direction (a single gallery each)."""
        for d in directions:
            self._check(d)
        images = list(self.test_visible) + list(self.test_thermal)
        nv = len(self.test_visible)
        vis = np.arange(nv, dtype=np.int64)
        thermal = np.arange(nv, len(images), dtype=np.int64)
        tasks = [
            VIRetrievalTask(d, "regdb", *((vis, [thermal]) if d == "v2i" else (thermal, [vis])))
            for d in directions
        ]
        return VIEvaluationPlan(images, tasks)

    def show_summary(self) -> None:
        """Log the counts of the trial's training and test sets."""
        rows = [
            ["train visible", self.num_train_pids, len(self.train_visible)],
            ["train thermal", self.num_train_pids, len(self.train_infrared)],
            ["test visible", len({x.pid for x in self.test_visible}), len(self.test_visible)],
            ["test thermal", len({x.pid for x in self.test_thermal}), len(self.test_thermal)],
        ]
        logger.info(
            "RegDB trial %d (%s):\n%s",
            self.trial,
            self.dataset_dir,
            tabulate(rows, headers=["subset", "# ids", "# images"], tablefmt="pipe"),
        )
