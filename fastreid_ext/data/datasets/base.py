"""Text-image ReID annotation parsing shared by CUHK-PEDES, ICFG-PEDES and RSTPReid (IRRA protocol)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tabulate import tabulate

from ..validation import (
    DatasetFormatError,
    check_relative_image_path,
    find_missing_files,
    find_split_conflict,
    missing_file_message,
)

__all__ = [
    "DatasetFormatError",
    "RetrievalSplit",
    "TextImageDataset",
    "TrainPair",
    "check_relative_image_path",
]

logger = logging.getLogger(__name__)

# IRRA's `_split_anno`: "train" and "test" are kept, every other split value is validation.
_TRAIN, _VAL, _TEST = "train", "val", "test"


@dataclass(frozen=True, slots=True)
class TrainPair:
    """One training sample: one caption of one image (IRRA trains on one tuple per caption).

    Attributes:
        pid: contiguous training identity in ``0..num_train_pids-1`` (target of the ID classifier).
        image_id: running index of the image entry in the training split, ``0..num_train_images-1``;
            the captions of one image share it.
        img_path: path of the image file (``<dataset_dir>/imgs/<relative path>``).
        caption: the raw caption text (tokenisation happens later).
    """

    pid: int
    image_id: int
    img_path: str
    caption: str


@dataclass
class RetrievalSplit:
    """An evaluation split: gallery = one entry per image, queries = one entry per caption.

    Attributes:
        image_pids: raw annotation id of each gallery image, length Ng.
        img_paths: path of each gallery image, length Ng.
        caption_pids: raw annotation id of each query caption, length Nq.
        captions: the query captions, length Nq.
        caption_image_ids: for each caption, the index into the gallery of its own image, length Nq.
    """

    image_pids: list[int] = field(default_factory=list)
    img_paths: list[str] = field(default_factory=list)
    caption_pids: list[int] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_image_ids: list[int] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        """Gallery size Ng."""
        return len(self.img_paths)

    @property
    def num_captions(self) -> int:
        """Number of text queries Nq."""
        return len(self.captions)

    @property
    def num_ids(self) -> int:
        """Number of distinct identities in the gallery."""
        return len(set(self.image_pids))


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TextImageDataset:
    """Base class of the text-image ReID datasets (one json annotation file + an ``imgs/`` folder).

    The annotation file is a json list with one dict per image holding ``id`` (int), ``split``
    (str: "train", "test", anything else is validation as in IRRA), ``captions`` (non-empty list of
    str) and the image path under :attr:`image_key` (relative to ``imgs/``). Images are never
    opened.

    Args:
        root: folder holding the dataset folders (fast-reid passes ``$FASTREID_DATASETS``).
        verify_images: check that every annotated image file exists under ``imgs/`` (one directory
            listing per distinct image folder). ``False`` skips the check, e.g. to read the
            annotations on a machine without the images.
        **kwargs: ignored; accepted because fast-reid forwards loader keyword arguments to datasets.

    Attributes:
        dataset_dir: ``<root>/<dataset_folder>`` (absolute).
        annotation_path: the annotation file that was read.
        train: one :class:`TrainPair` per training caption.
        val: validation :class:`RetrievalSplit`, or ``None`` when the file has no validation entries.
        test: test :class:`RetrievalSplit`.
        num_train_pids: number of training identities (ID-classifier size).
        num_train_images: number of training images.
        train_pid_map: raw training id -> contiguous pid (sorted raw ids map to ``0..N-1``).

    Pid convention: training pids are contiguous (IRRA: CUHK id - 1; ICFG/RSTP ids are already
    ``0..N-1``); val/test keep the raw ids since only equality matters for retrieval metrics.
    """

    dataset_folder: ClassVar[str] = ""
    annotation_files: ClassVar[tuple[str, ...]] = ()
    image_key: ClassVar[str] = "file_path"
    image_folder: ClassVar[str] = "imgs"

    def __init__(self, root: str = "datasets", verify_images: bool = True, **kwargs: Any) -> None:
        self.root = root
        self.dataset_dir = os.path.abspath(
            os.path.join(os.path.expanduser(root), self.dataset_folder)
        )
        self.images_dir = os.path.join(self.dataset_dir, self.image_folder)
        self.verify_images = verify_images
        self.annotation_path = self._find_annotation_file()

        entries = self._read_json()
        parsed = [self._validate_entry(i, entry) for i, entry in enumerate(entries)]
        self._check_split_ids(parsed)
        if verify_images:
            self._check_images_exist(parsed)
        self._build_splits(parsed)

    # ------------------------------------------------------------------ loading
    def _find_annotation_file(self) -> str:
        name = type(self).__name__
        if not os.path.isdir(self.dataset_dir):
            raise DatasetFormatError(
                f"{name}: dataset directory {self.dataset_dir!r} does not exist (root={self.root!r}); "
                f"expected <root>/{self.dataset_folder}/{{{'|'.join(self.annotation_files)}, "
                f"{self.image_folder}/}}"
            )
        for candidate in self.annotation_files:
            path = os.path.join(self.dataset_dir, candidate)
            if os.path.isfile(path):
                return path
        raise DatasetFormatError(
            f"{name}: no annotation file in {self.dataset_dir!r}; tried "
            + ", ".join(repr(c) for c in self.annotation_files)
        )

    def _read_json(self) -> list[Any]:
        try:
            with open(self.annotation_path, encoding="utf-8") as f:
                entries = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(
                f"{self.annotation_path}: invalid json at line {e.lineno} column {e.colno}: {e.msg}"
            ) from e
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{self.annotation_path}: not UTF-8 text ({e})") from e
        if not isinstance(entries, list):
            raise DatasetFormatError(
                f"{self.annotation_path}: top level must be a json list of image entries, "
                f"got {type(entries).__name__}"
            )
        return entries

    def _error(self, index: int, message: str) -> DatasetFormatError:
        return DatasetFormatError(f"{self.annotation_path} entry {index}: {message}")

    def _validate_entry(self, index: int, entry: Any) -> tuple[int, str, str, list[str]]:
        """Check one json entry; returns (raw id, split bucket, normalised rel path, captions)."""
        if not isinstance(entry, dict):
            raise self._error(index, f"must be a json object, got {type(entry).__name__}")
        for key in ("id", "split", "captions", self.image_key):
            if key not in entry:
                raise self._error(
                    index, f"missing field {key!r} (fields present: {sorted(entry)!r})"
                )
        raw_id = entry["id"]
        if not isinstance(raw_id, int) or isinstance(raw_id, bool):
            raise self._error(index, f"field 'id' must be an integer, got {_short_repr(raw_id)}")
        split = entry["split"]
        if not isinstance(split, str):
            raise self._error(index, f"field 'split' must be a string, got {_short_repr(split)}")
        captions = entry["captions"]
        if not isinstance(captions, list) or not captions:
            raise self._error(
                index,
                f"field 'captions' must be a non-empty list of strings, got {_short_repr(captions)}",
            )
        for j, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise self._error(
                    index,
                    f"field 'captions' item {j} must be a non-empty string, got {_short_repr(caption)}",
                )
        rel = entry[self.image_key]
        if not isinstance(rel, str) or not rel:
            raise self._error(
                index,
                f"field {self.image_key!r} must be a non-empty string, got {_short_repr(rel)}",
            )
        try:
            rel = check_relative_image_path(rel, f"{self.image_folder}/")
        except ValueError as e:
            raise self._error(index, f"field {self.image_key!r}: {e}") from None
        bucket = split if split in (_TRAIN, _TEST) else _VAL
        return raw_id, bucket, rel, captions

    def _check_split_ids(self, parsed: list[tuple[int, str, str, list[str]]]) -> None:
        conflict = find_split_conflict(
            (raw_id, bucket, index) for index, (raw_id, bucket, _, _) in enumerate(parsed)
        )
        if conflict is not None:
            raise self._error(
                conflict.location,
                f"id {conflict.key} is in split {conflict.split!r} but entry "
                f"{conflict.first_location} put it in split {conflict.first_split!r} "
                "(duplicate ids across splits)",
            )
        counts = {b: 0 for b in (_TRAIN, _VAL, _TEST)}
        for _, bucket, _, _ in parsed:
            counts[bucket] += 1
        for required in (_TRAIN, _TEST):
            if counts[required] == 0:
                raise DatasetFormatError(
                    f"{self.annotation_path}: no entries with split {required!r} "
                    f"(entries per split: {counts})"
                )

    def _check_images_exist(self, parsed: list[tuple[int, str, str, list[str]]]) -> None:
        if not os.path.isdir(self.images_dir):
            raise DatasetFormatError(
                f"{type(self).__name__}: image folder {self.images_dir!r} does not exist "
                f"(annotation {self.annotation_path})"
            )
        missing = find_missing_files(self.images_dir, [rel for _, _, rel, _ in parsed])
        if missing:
            index = missing[0]
            raise self._error(
                index,
                f"field {self.image_key!r}: "
                + missing_file_message(parsed[index][2], self.images_dir, len(missing)),
            )

    def _build_splits(self, parsed: list[tuple[int, str, str, list[str]]]) -> None:
        train_ids = sorted({raw_id for raw_id, bucket, _, _ in parsed if bucket == _TRAIN})
        self.train_pid_map: dict[int, int] = {raw: pid for pid, raw in enumerate(train_ids)}
        self.num_train_pids = len(train_ids)
        self.train: list[TrainPair] = []
        splits = {_VAL: RetrievalSplit(), _TEST: RetrievalSplit()}
        image_id = 0
        prefix = self.images_dir + os.sep
        for raw_id, bucket, rel, captions in parsed:
            path = prefix + rel
            if bucket == _TRAIN:
                pid = self.train_pid_map[raw_id]
                self.train.extend(TrainPair(pid, image_id, path, c) for c in captions)
                image_id += 1
                continue
            split = splits[bucket]
            gallery_index = len(split.img_paths)
            split.image_pids.append(raw_id)
            split.img_paths.append(path)
            split.caption_pids.extend([raw_id] * len(captions))
            split.captions.extend(captions)
            split.caption_image_ids.extend([gallery_index] * len(captions))
        self.num_train_images = image_id
        self.val: RetrievalSplit | None = splits[_VAL] if splits[_VAL].num_images else None
        self.test: RetrievalSplit = splits[_TEST]

    # ------------------------------------------------------------------ access
    def split(self, name: str) -> RetrievalSplit:
        """Return the evaluation split ``"val"`` or ``"test"`` (ValueError if absent/unknown)."""
        if name == _TEST:
            return self.test
        if name == _VAL:
            if self.val is None:
                raise ValueError(
                    f"{type(self).__name__} has no 'val' split in {self.annotation_path}; use 'test'"
                )
            return self.val
        raise ValueError(f"unknown split {name!r}: expected 'val' or 'test'")

    def summary_rows(self) -> list[list[Any]]:
        """Rows ``[subset, #ids, #images, #captions]`` for train, val (if any) and test."""
        rows: list[list[Any]] = [
            ["train", self.num_train_pids, self.num_train_images, len(self.train)]
        ]
        for name, split in ((_VAL, self.val), (_TEST, self.test)):
            if split is not None:
                rows.append([name, split.num_ids, split.num_images, split.num_captions])
        return rows

    def show_summary(self) -> None:
        """Log a table with ids / images / captions per split."""
        table = tabulate(
            self.summary_rows(),
            headers=["subset", "# ids", "# images", "# captions"],
            tablefmt="pipe",
            numalign="left",
        )
        logger.info("=> Loaded %s from %s\n%s", type(self).__name__, self.annotation_path, table)
