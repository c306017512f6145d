"""RegDB (Nguyen et al., Sensors 2017) read from its released ``idx/`` split files."""

from __future__ import annotations

import logging
import os
from typing import List, Sequence

import numpy as np
from fastreid.config import CfgNode
from fastreid.data.datasets import DATASET_REGISTRY
from tabulate import tabulate

from .base import (
    INFRARED,
    VISIBLE,
    VIDatasetError,
    VIEvaluationPlan,
    VIImage,
    VIRetrievalTask,
    contiguous_labels,
)

__all__ = ["RegDBCrossModal", "read_index_file", "REGDB_DIRECTIONS"]

logger = logging.getLogger(__name__)

#: Camera ids of the two modalities (one dual-camera rig); different ids as AGW's eval_regdb.
VISIBLE_CAMID, THERMAL_CAMID = 1, 2
#: Retrieval directions: visible queries against the thermal gallery, and the reverse.
REGDB_DIRECTIONS = ("v2i", "i2v")


def read_index_file(path: str, dataset_dir: str, modality: int, camid: int) -> List[VIImage]:
    """Images of an ``idx/*.txt`` file: one ``<path relative to the dataset folder> <int label>``
    per line (blank lines skipped). The label becomes the image's pid."""
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
            rel = parts[0]
            if os.path.isabs(rel) or rel.replace("\\", "/").startswith("../"):
                raise VIDatasetError(f"{path} line {lineno}: image path {rel!r} must be relative")
            out.append(VIImage(os.path.join(dataset_dir, rel), int(parts[1]), camid, modality))
    if not out:
        raise VIDatasetError(f"{path}: no image listed")
    return out


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
    """

    dataset_folder = "RegDB"
    protocol = "regdb"

    def __init__(self, root: str = "datasets", trial: int = 1, **kwargs) -> None:
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

        def read(split: str, name: str, modality: int, camid: int) -> List[VIImage]:
            path = os.path.join(self.dataset_dir, "idx", f"{split}_{name}_{self.trial}.txt")
            return read_index_file(path, self.dataset_dir, modality, camid)

        train_v = read("train", "visible", VISIBLE, VISIBLE_CAMID)
        train_t = read("train", "thermal", INFRARED, THERMAL_CAMID)
        self.test_visible = read("test", "visible", VISIBLE, VISIBLE_CAMID)
        self.test_thermal = read("test", "thermal", INFRARED, THERMAL_CAMID)
        common = {x.pid for x in train_v} & {x.pid for x in train_t}
        if not common:
            raise VIDatasetError(
                f"{self.dataset_dir}: trial {self.trial} has no training label in both modalities"
            )
        labels = contiguous_labels(common)
        self.train_visible = [self._relabel(x, labels) for x in train_v if x.pid in labels]
        self.train_infrared = [self._relabel(x, labels) for x in train_t if x.pid in labels]
        self.num_train_pids = len(labels)

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
