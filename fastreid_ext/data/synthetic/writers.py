"""Write a synthetic text-image ReID dataset in the exact CUHK-PEDES / ICFG-PEDES / RSTPReid on-disk format."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...utils.atomic_io import atomic_write_text
from .attributes import PersonAttributes, sample_identity_attributes
from .captions import caption_tokens, describe_person
from .render import encode_jpeg, render_person


@dataclass(frozen=True)
class FormatSpec:
    """On-disk conventions of one real dataset."""

    folder: str
    annotation: str
    image_key: str
    first_id: int
    has_val: bool
    captions_per_image: int
    processed_tokens: bool
    default_fractions: tuple[float, float, float]


FORMATS: dict[str, FormatSpec] = {
    "cuhk": FormatSpec("CUHK-PEDES", "reid_raw.json", "file_path", 1, True, 2, True, (0.8, 0.1, 0.1)),
    "icfg": FormatSpec("ICFG-PEDES", "ICFG-PEDES.json", "file_path", 0, False, 1, True, (0.75, 0.0, 0.25)),
    "rstp": FormatSpec("RSTPReid", "data_captions.json", "img_path", 0, True, 2, False, (0.8, 0.1, 0.1)),
}  # fmt: skip
_ICFG_SESSIONS = ("0113morning", "0113noon", "0302afternoon", "0303morning", "0113afternoon")


def split_identity_counts(
    num_ids: int,
    fmt: str,
    split_fractions: tuple[float, float, float] | None = None,
    split_counts: tuple[int, int, int] | None = None,
) -> tuple[int, int, int]:
    """Number of (train, val, test) identities.

    Args:
        num_ids: total identities.
        fmt: "cuhk", "icfg" or "rstp" (ICFG has no val split: its val count must be 0).
        split_fractions: (train, val, test) fractions summing to 1; a positive fraction gets at least
            one identity. Default: the format's (0.8, 0.1, 0.1), ICFG (0.75, 0, 0.25).
        split_counts: explicit (train, val, test) counts summing to ``num_ids`` (overrides fractions).
    Returns:
        (n_train, n_val, n_test), with n_train >= 1 and n_test >= 1.
    """
    spec = _format_spec(fmt)
    if split_counts is not None:
        if split_fractions is not None:
            raise ValueError("give split_fractions or split_counts, not both")
        if len(split_counts) != 3 or any(int(c) != c or c < 0 for c in split_counts):
            raise ValueError(f"split_counts must be 3 non-negative integers, got {split_counts}")
        if sum(split_counts) != num_ids:
            raise ValueError(f"split_counts {split_counts} must sum to num_ids={num_ids}")
        n_train, n_val, n_test = (int(c) for c in split_counts)
    else:
        fractions = spec.default_fractions if split_fractions is None else split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"split_fractions must be 3 non-negative numbers summing to 1, got {fractions}"
            )
        n_val, n_test = (max(1, round(num_ids * f)) if f > 0 else 0 for f in fractions[1:])
        n_train = num_ids - n_val - n_test
    if not spec.has_val and n_val:
        raise ValueError(
            f"format {fmt!r} (ICFG-PEDES) has no val split; got {n_val} val identities"
        )
    if n_train < 1 or n_test < 1:
        raise ValueError(
            f"need at least one train and one test identity, got train={n_train} val={n_val} "
            f"test={n_test} from num_ids={num_ids}"
        )
    return n_train, n_val, n_test


def _format_spec(fmt: str) -> FormatSpec:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {sorted(FORMATS)}")
    return FORMATS[fmt]


class _FileNamer:
    """Real-looking relative image paths (under imgs/) for each format."""

    def __init__(self, fmt: str, rng: np.random.Generator) -> None:
        self.fmt = fmt
        self.rng = rng
        self.serial = int(rng.integers(1000, 5000))  # CUHK "s" running number
        self.local_ids: dict[
            tuple[str, int], int
        ] = {}  # (source folder, json id) -> folder-local id
        self.folder_sizes: dict[str, int] = {}
        self.frames: dict[int, int] = {}  # json id -> last frame number (strictly increasing)

    def _local_id(self, folder: str, raw_id: int) -> int:
        key = (folder, raw_id)
        if key not in self.local_ids:
            self.local_ids[key] = self.folder_sizes.get(folder, 0)
            self.folder_sizes[folder] = self.local_ids[key] + 1
        return self.local_ids[key]

    def _next_frame(self, raw_id: int) -> int:
        self.frames[raw_id] = self.frames.get(raw_id, 0) + int(self.rng.integers(1, 400))
        return self.frames[raw_id]

    def identity_folder(self, raw_id: int, split: str) -> str:
        if self.fmt == "cuhk":  # CUHK-PEDES gathers images of several source datasets
            query = "train_query" if split == "train" else "test_query"
            return (query, query, "Market", "CUHK01")[int(self.rng.integers(4))]
        if self.fmt == "icfg":  # MSMT17's own train/test folders
            return "train" if split == "train" else "test"
        return ""

    def name(self, folder: str, raw_id: int, k: int) -> str:
        cam = int(self.rng.integers(1, 16))
        frame = self._next_frame(raw_id)  # unique per identity, so file names never collide
        if self.fmt == "cuhk":
            self.serial += 1
            if folder == "Market":
                return f"Market/{self._local_id(folder, raw_id):04d}_c{cam % 6 + 1}s1_{frame:06d}_00.jpg"
            if folder == "CUHK01":
                return f"CUHK01/{self._local_id(folder, raw_id) + 1:04d}{k + 1:03d}.jpg"
            return f"{folder}/p{raw_id}_s{self.serial}.jpg"
        if self.fmt == "icfg":
            local = self._local_id(folder, raw_id)
            session = _ICFG_SESSIONS[int(self.rng.integers(len(_ICFG_SESSIONS)))]
            return f"{folder}/{local:04d}/{local:04d}_{k:03d}_{cam:02d}_{session}_{frame:04d}_0.jpg"
        return f"{raw_id:04d}_c{cam}_{frame:04d}.jpg"


def _prepare_dir(dataset_dir: str, spec: FormatSpec, overwrite: bool) -> None:
    targets = [os.path.join(dataset_dir, "imgs"), os.path.join(dataset_dir, spec.annotation)]
    existing = [t for t in targets if os.path.lexists(t)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True to replace it")
    for path in existing:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(os.path.join(dataset_dir, "imgs"), exist_ok=True)


def write_synthetic_dataset(
    root: str,
    fmt: str,
    num_ids: int,
    images_per_id: int,
    captions_per_image: int | None = None,
    seed: int = 0,
    image_size: tuple[int, int] = (96, 48),
    split_fractions: tuple[float, float, float] | None = None,
    split_counts: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    jpeg_quality: int = 90,
) -> str:
    """Generate a synthetic text-image ReID dataset in a real dataset's on-disk format.

    Each identity gets a distinct attribute combination (:mod:`.attributes`), rendered with per-image
    variation (:mod:`.render`) and described by captions that name every attribute
    (:mod:`.captions`). Identities are split train -> val -> test in id order. Output is a pure
    function of the arguments: the same seed gives byte-identical json and JPEG files.

    Args:
        root: folder receiving ``<root>/<CUHK-PEDES|ICFG-PEDES|RSTPReid>/``.
        fmt: "cuhk" (reid_raw.json, ids from 1, imgs/{train_query,test_query,Market,CUHK01}/),
            "icfg" (ICFG-PEDES.json, ids from 0, imgs/{train,test}/<pid>/, no val split) or
            "rstp" (data_captions.json, ``img_path`` key, flat imgs/).
        num_ids: number of identities.
        images_per_id: images per identity.
        captions_per_image: captions per image; default: CUHK 2, ICFG 1, RSTP 2 (the real values).
        seed: random seed.
        image_size: (H, W) of the images.
        split_fractions / split_counts: identity split, see :func:`split_identity_counts`.
        overwrite: replace an existing ``imgs/`` and annotation file in the dataset folder.
        jpeg_quality: JPEG quality of the images.
    Returns:
        the dataset directory.
    """
    spec = _format_spec(fmt)
    if images_per_id < 1:
        raise ValueError(f"images_per_id must be >= 1, got {images_per_id}")
    cpi = spec.captions_per_image if captions_per_image is None else captions_per_image
    if cpi < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {cpi}")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size must be (H, W) with both >= 16, got {image_size}")
    n_train, n_val, _ = split_identity_counts(num_ids, fmt, split_fractions, split_counts)
    identities = sample_identity_attributes(num_ids, np.random.default_rng([seed, 0]))

    dataset_dir = os.path.join(root, spec.folder)
    _prepare_dir(dataset_dir, spec, overwrite)
    images_dir = os.path.join(dataset_dir, "imgs")
    namer = _FileNamer(fmt, np.random.default_rng([seed, 1]))
    entries: list[dict[str, Any]] = []
    made_dirs: set[str] = set()
    for i, attrs in enumerate(identities):
        raw_id = spec.first_id + i
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        folder = namer.identity_folder(raw_id, split)
        for k in range(images_per_id):
            rel = namer.name(folder, raw_id, k)
            image = render_person(attrs, np.random.default_rng([seed, 2, i, k]), tuple(image_size))
            path = os.path.join(images_dir, rel)
            parent = os.path.dirname(path)
            if parent not in made_dirs:
                os.makedirs(parent, exist_ok=True)
                made_dirs.add(parent)
            with open(path, "wb") as f:
                f.write(encode_jpeg(image, jpeg_quality))
            caption_rng = np.random.default_rng([seed, 3, i, k])
            captions = [describe_person(attrs, caption_rng) for _ in range(cpi)]
            entries.append(_entry(spec, raw_id, split, rel, captions))

    # written last and atomically: an annotation file means the whole tree is there
    atomic_write_text(os.path.join(dataset_dir, spec.annotation), json.dumps(entries))
    return dataset_dir


def _entry(spec: FormatSpec, raw_id: int, split: str, rel: str, captions: list[str]) -> dict:
    """One json entry with the real key order of the format."""
    if spec.processed_tokens:
        return {
            "split": split,
            "captions": captions,
            "file_path": rel,
            "processed_tokens": [caption_tokens(c) for c in captions],
            "id": raw_id,
        }
    return {"id": raw_id, spec.image_key: rel, "captions": captions, "split": split}


def identity_attributes(num_ids: int, seed: int) -> list[PersonAttributes]:
    """The attribute combinations :func:`write_synthetic_dataset` assigns to identities 0..num_ids-1
    (in json-id order: CUHK id = index + 1, ICFG/RSTP id = index) for a given seed."""
    return sample_identity_attributes(num_ids, np.random.default_rng([seed, 0]))
