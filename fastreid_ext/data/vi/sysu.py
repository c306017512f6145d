"""SYSU-MM01 (Wu et al., ICCV 2017) read from its released layout, with the AGW test protocol."""

from __future__ import annotations

import logging
import os
import random
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from fastreid.config import CfgNode
from fastreid.data.datasets import DATASET_REGISTRY
from tabulate import tabulate

from ..validation import find_split_conflict
from .base import (
    INFRARED,
    VISIBLE,
    VIDatasetError,
    VIEvaluationPlan,
    VIImage,
    VIRetrievalTask,
    contiguous_labels,
    list_images,
)

__all__ = [
    "SYSUMM01CrossModal",
    "read_id_entries",
    "read_id_file",
    "read_split_ids",
    "sysu_id_files",
    "parse_sysu_setting",
    "MULTI_SHOT_SEEDINGS",
]

logger = logging.getLogger(__name__)

VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
#: Images drawn per (identity, camera) folder in multi-shot galleries.
MULTI_SHOT_IMAGES = 10
#: ``TEST.VI.MULTI_SHOT_SEEDING`` values (see :class:`SYSUMM01CrossModal`).
MULTI_SHOT_SEEDINGS = ("sequential", "per_trial")
#: The id files of ``exp/``, in the order their identities are checked for overlaps.
SYSU_SPLITS = ("train", "val", "test")


def read_id_entries(path: str) -> List[Tuple[int, int]]:
    """``(identity, line number)`` of every identity of an ``exp/*_id.txt`` file: integers
    separated by commas (one line in the release; any whitespace or extra lines are accepted).

    Raises:
        VIDatasetError: naming the file (and the line of a token that is not an identity).
    """
    if not os.path.isfile(path):
        raise VIDatasetError(f"SYSU-MM01 id file not found: {path}")
    entries = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            for token in (t for t in re.split(r"[,\s]+", line) if t):
                if not token.isdigit():
                    raise VIDatasetError(
                        f"{path} line {lineno}: '{token}' is not a non-negative integer identity"
                    )
                entries.append((int(token), lineno))
    if not entries:
        raise VIDatasetError(f"{path}: no identity listed")
    return entries


def read_id_file(path: str) -> List[int]:
    """Identities of an ``exp/*_id.txt`` file in file order (see :func:`read_id_entries`)."""
    return [pid for pid, _ in read_id_entries(path)]


def sysu_id_files(dataset_dir: str) -> Dict[str, str]:
    """``{"train": <dataset_dir>/exp/train_id.txt, "val": ..., "test": ...}``."""
    return {split: os.path.join(dataset_dir, "exp", f"{split}_id.txt") for split in SYSU_SPLITS}


def read_split_ids(files: Dict[str, str]) -> Dict[str, List[int]]:
    """Sorted distinct identities of each id file of :func:`sysu_id_files`.

    Raises:
        VIDatasetError: for an identity listed in two of the files, naming both files, their
            lines and the identity (a test identity among the training ones leaks the test set).
    """
    entries = {split: read_id_entries(path) for split, path in files.items()}
    conflict = find_split_conflict(
        (pid, split, lineno) for split in SYSU_SPLITS for pid, lineno in entries[split]
    )
    if conflict is not None:
        raise VIDatasetError(
            f"{files[conflict.split]} line {conflict.location}: identity {conflict.key} is also "
            f"listed in {files[conflict.first_split]} line {conflict.first_location}; an identity "
            "belongs to one of train_id.txt, val_id.txt, test_id.txt"
            + (" (train/test leak)" if conflict.split == "test" else "")
        )
    return {split: sorted({pid for pid, _ in e}) for split, e in entries.items()}


def parse_sysu_setting(setting: str) -> Tuple[str, str]:
    """``"all-single"`` -> ``("all", "single")``; mode in {all, indoor}, shot in {single, multi}."""
    parts = setting.split("-")
    if len(parts) != 2 or parts[0] not in GALLERY_CAMERAS or parts[1] not in ("single", "multi"):
        raise KeyError(
            f"TEST.VI.SYSU_SETTINGS entry '{setting}' must be '<mode>-<shot>' with mode in "
            f"{sorted(GALLERY_CAMERAS)} and shot in ['multi', 'single']"
        )
    return parts[0], parts[1]


@DATASET_REGISTRY.register()
class SYSUMM01CrossModal:
    """SYSU-MM01 for visible-infrared ReID: ``<root>/SYSU-MM01/cam{1..6}/<pid:04d>/<img>.jpg`` and
    ``exp/{train_id,val_id,test_id}.txt``.

    * Training set: identities of train_id and val_id (395 in the release), every image of the
      visible cameras 1, 2, 4, 5 and the infrared cameras 3, 6 (22,258 + 11,909). Labels are the
      identities with infrared images, in ascending order (AGW's ``pre_process_sysu``);
      identities lacking one modality cannot form cross-modal pairs and are dropped (logged).
    * Query (:meth:`query`): every infrared image of the test identities (3,803), the same for
      all-search and indoor-search; order: identity ascending, camera 3 then 6, file name.
    * Gallery (:meth:`gallery`, :meth:`galleries`): visible images of the test identities from
      cameras 1, 2, 4, 5 (all-search) or 1, 2 (indoor-search), folders in (identity, camera)
      order. Single-shot: ``random.seed(trial)`` then one ``random.choice`` per existing folder
      -- the AGW draw, reproduced exactly (301 images for all-search). Multi-shot: 10 images per
      folder, ``RandomState.choice(len(files), 10, replace=False)`` (the same indices as numpy's
      ``choice(files, 10, replace=False)`` of the authors). ``multi_shot_seeding="sequential"``
      (the authors': their ``seed_torch`` runs ``np.random.seed(seed)`` before the loaders are
      built, and the 10 trials draw one after another from that state) uses one
      ``RandomState(multi_shot_seed)`` for trials 0, 1, ... in order, so trial t depends on the
      draws of trials < t; ``"per_trial"`` uses ``RandomState(trial)``. Folders with fewer than
      10 images give all of them (the authors' code fails on them).

    The training lists are read on first use (evaluation never lists the training tree).
    Identity folders list files with an image extension (jpg, jpeg, png, bmp), sorted by name.

    Checks at start-up: an identity listed in two of the id files is an error naming both files,
    lines and the identity (a test identity in train_id.txt or val_id.txt would leak the test set
    into training); test identities without any image, without infrared images (never a query) or
    without visible images (never in a gallery) are logged as warnings.
    """

    dataset_folder = "SYSU-MM01"
    protocol = "sysu"

    def __init__(
        self,
        root: str = "datasets",
        multi_shot_seeding: str = "sequential",
        multi_shot_seed: int = 1,
        **kwargs,
    ) -> None:
        if multi_shot_seeding not in MULTI_SHOT_SEEDINGS:
            raise KeyError(
                f"TEST.VI.MULTI_SHOT_SEEDING must be one of {MULTI_SHOT_SEEDINGS}, got "
                f"'{multi_shot_seeding}'"
            )
        self.root = root
        self.multi_shot_seeding, self.multi_shot_seed = multi_shot_seeding, int(multi_shot_seed)
        self.dataset_dir = os.path.join(root, self.dataset_folder)
        if not os.path.isdir(self.dataset_dir):
            raise VIDatasetError(
                f"SYSU-MM01 folder not found: {self.dataset_dir} (set DATASETS.ROOT to the folder "
                "that contains SYSU-MM01/)"
            )
        self.id_files = sysu_id_files(self.dataset_dir)
        ids = read_split_ids(self.id_files)
        self.train_ids = sorted(ids["train"] + ids["val"])
        self.test_ids = ids["test"]
        self._train: Optional[Tuple[List[VIImage], List[VIImage], int]] = None
        self._test_files: Dict[Tuple[int, int], List[str]] = {
            (pid, cam): list_images(self._folder(cam, pid))
            for pid in self.test_ids
            for cam in VISIBLE_CAMERAS + INFRARED_CAMERAS
        }
        self._warn_incomplete_test_ids()
        if not self.query():
            raise VIDatasetError(
                f"{self.dataset_dir}: no infrared image (cam3/cam6) of any test identity "
                f"({self.id_files['test']})"
            )

    def _warn_incomplete_test_ids(self) -> None:
        """Log the test identities without any image, without infrared images (never a query)
        or without visible images (never in a gallery)."""
        test_file = self.id_files["test"]
        has = {
            m: {pid for (pid, cam), files in self._test_files.items() if files and cam in cams}
            for m, cams in ((VISIBLE, VISIBLE_CAMERAS), (INFRARED, INFRARED_CAMERAS))
        }
        with_images = has[VISIBLE] | has[INFRARED]
        empty = [p for p in self.test_ids if p not in with_images]
        incomplete = {m: [p for p in self.test_ids if p in with_images - has[m]] for m in has}
        if empty:
            logger.warning(
                "SYSU-MM01: %d test identities of %s have no image in cam1..cam6/<id>/ and are "
                "left out of the evaluation: %s",
                len(empty),
                test_file,
                empty[:20],
            )
        for modality, role in ((INFRARED, "query"), (VISIBLE, "gallery")):
            partial = incomplete[modality]
            if partial:
                logger.warning(
                    "SYSU-MM01: %d test identities of %s have no %s image (none in the %s): %s",
                    len(partial),
                    test_file,
                    "infrared (cam3/cam6)" if modality == INFRARED else "visible (cam1/2/4/5)",
                    role,
                    partial[:20],
                )

    @classmethod
    def from_config(cls, cfg: CfgNode, root: str) -> SYSUMM01CrossModal:
        """Build from a config (``TEST.VI.MULTI_SHOT_SEEDING`` / ``MULTI_SHOT_SEED``)."""
        return cls(root, cfg.TEST.VI.MULTI_SHOT_SEEDING, cfg.TEST.VI.MULTI_SHOT_SEED)

    def _training(self) -> Tuple[List[VIImage], List[VIImage], int]:
        if self._train is None:
            visible, infrared = self._load_train(self.train_ids)
            self._train = (visible, infrared, len({x.label for x in infrared}))
        return self._train

    @property
    def train_visible(self) -> List[VIImage]:
        """Visible training images (listed on first use)."""
        return self._training()[0]

    @property
    def train_infrared(self) -> List[VIImage]:
        """Infrared training images (listed on first use)."""
        return self._training()[1]

    @property
    def num_train_pids(self) -> int:
        """Training identities (labels ``0..num_train_pids-1``)."""
        return self._training()[2]

    def _folder(self, cam: int, pid: int) -> str:
        return os.path.join(self.dataset_dir, f"cam{cam}", f"{pid:04d}")

    def _load_train(self, ids: Sequence[int]) -> Tuple[List[VIImage], List[VIImage]]:
        files = {
            (pid, cam): list_images(self._folder(cam, pid))
            for pid in ids
            for cam in VISIBLE_CAMERAS + INFRARED_CAMERAS
        }
        has = {
            m: {pid for (pid, cam), f in files.items() if f and cam in cams}
            for m, cams in ((VISIBLE, VISIBLE_CAMERAS), (INFRARED, INFRARED_CAMERAS))
        }
        usable = has[VISIBLE] & has[INFRARED]
        dropped = sorted(set(ids) - usable)
        if dropped:
            logger.warning(
                "SYSU-MM01: %d training identities lack visible or infrared images and are "
                "dropped: %s",
                len(dropped),
                dropped[:20],
            )
        if not usable:
            raise VIDatasetError(
                f"{self.dataset_dir}: no training identity has both visible and infrared images"
            )
        labels = contiguous_labels(usable)
        out: Tuple[List[VIImage], List[VIImage]] = ([], [])
        for pid in sorted(usable):
            for modality, cams in ((VISIBLE, VISIBLE_CAMERAS), (INFRARED, INFRARED_CAMERAS)):
                for cam in cams:
                    out[modality].extend(
                        VIImage(p, pid, cam, modality, labels[pid]) for p in files[(pid, cam)]
                    )
        return out

    # ------------------------------------------------------------------ protocol
    def query(self) -> List[VIImage]:
        """Infrared images (cameras 3 and 6) of the test identities."""
        return [
            VIImage(p, pid, cam, INFRARED)
            for pid in self.test_ids
            for cam in INFRARED_CAMERAS
            for p in self._test_files[(pid, cam)]
        ]

    def _draw(self, trial: int, mode: str, shot: str, np_rng: np.random.RandomState):
        py_rng = random.Random(trial)
        out: List[VIImage] = []
        for pid in self.test_ids:
            for cam in GALLERY_CAMERAS[mode]:
                files = self._test_files[(pid, cam)]
                if not files:
                    continue
                if shot == "single":
                    chosen = [py_rng.choice(files)]
                else:
                    k = min(MULTI_SHOT_IMAGES, len(files))
                    chosen = [files[i] for i in np_rng.choice(len(files), k, replace=False)]
                out.extend(VIImage(p, pid, cam, VISIBLE) for p in chosen)
        return out

    def galleries(
        self, num_trials: int, mode: str = "all", shot: str = "single"
    ) -> List[List[VIImage]]:
        """Visible galleries of trials ``0..num_trials-1``; see the class docstring."""
        if mode not in GALLERY_CAMERAS:
            raise KeyError(f"SYSU gallery mode must be one of {sorted(GALLERY_CAMERAS)}: {mode}")
        if shot not in ("single", "multi"):
            raise KeyError(f"SYSU gallery shot must be 'single' or 'multi': {shot}")
        sequential = shot == "multi" and self.multi_shot_seeding == "sequential"
        shared = np.random.RandomState(self.multi_shot_seed) if sequential else None
        return [
            self._draw(t, mode, shot, shared if sequential else np.random.RandomState(t))
            for t in range(num_trials)
        ]

    def gallery(self, trial: int, mode: str = "all", shot: str = "single") -> List[VIImage]:
        """Visible gallery of trial ``trial`` (sequential multi-shot replays trials < trial)."""
        if trial < 0:
            raise ValueError(f"SYSU gallery trial must be >= 0, got {trial}")
        return self.galleries(trial + 1, mode, shot)[trial]

    def evaluation_plan(self, settings: Sequence[str], num_trials: int) -> VIEvaluationPlan:
        """Query images once, the union of every trial's gallery once, and one task per setting
        (e.g. ``["all-single", "indoor-single"]``) with the galleries of trials
        ``0..num_trials-1``."""
        if num_trials < 1:
            raise ValueError(f"TEST.VI.TRIALS must be >= 1, got {num_trials}")
        query = self.query()
        images: List[VIImage] = list(query)
        index = {(x.img_path, x.modality): i for i, x in enumerate(images)}
        tasks = []
        for setting in settings:
            mode, shot = parse_sysu_setting(setting)
            galleries = []
            for drawn in self.galleries(num_trials, mode, shot):
                idx = []
                for x in drawn:
                    key = (x.img_path, x.modality)
                    if key not in index:
                        index[key] = len(images)
                        images.append(x)
                    idx.append(index[key])
                galleries.append(np.asarray(idx, dtype=np.int64))
            tasks.append(
                VIRetrievalTask(setting, "sysu", np.arange(len(query), dtype=np.int64), galleries)
            )
        return VIEvaluationPlan(images, tasks)

    def show_summary(self) -> None:
        """Log image and identity counts of the training set and the test protocol."""
        query = self.query()
        rows = [
            ["train visible", self.num_train_pids, len(self.train_visible)],
            ["train infrared", self.num_train_pids, len(self.train_infrared)],
            ["query (cam 3, 6)", len({x.pid for x in query}), len(query)],
            ["gallery all, trial 0", len(self.test_ids), len(self.gallery(0, "all"))],
            ["gallery indoor, trial 0", len(self.test_ids), len(self.gallery(0, "indoor"))],
        ]
        logger.info(
            "SYSU-MM01 (%s):\n%s",
            self.dataset_dir,
            tabulate(rows, headers=["subset", "# ids", "# images"], tablefmt="pipe"),
        )
