"""Synthetic visible-infrared pedestrians written in the real SYSU-MM01 and RegDB layouts.

Identities are the attribute combinations of :mod:`fastreid_ext.data.synthetic` (gender, clothes
colours and types, stripes, headwear, bag, shoes), rendered with per-image pose, background and
lighting. Infrared images lose colour: a near-infrared response (a fixed non-luminance mix of
R, G, B, so dark red and dark blue clothes differ from their visible gray levels), a per-image
gamma and gain, blur and sensor noise, replicated into three equal channels. Matching across
modalities therefore relies on shape and pattern cues (hair length, skirt / shorts, stripes,
hat, bag) and on intensity, which stays learnable. Output is a pure function of the arguments.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

from ..synthetic.attributes import PersonAttributes, sample_identity_attributes
from ..synthetic.render import encode_jpeg, render_person

__all__ = [
    "near_infrared",
    "write_synthetic_sysu",
    "write_synthetic_regdb",
    "sysu_split_counts",
]

#: Near-infrared (SYSU cameras 3, 6) and thermal (RegDB) responses to R, G, B.
NIR_WEIGHTS = (0.55, 0.30, 0.15)
THERMAL_WEIGHTS = (0.30, 0.25, 0.45)
#: Per-camera colour cast of the visible SYSU cameras (1, 2 indoor; 4, 5 outdoor) and the gain
#: of the infrared ones (3 indoor, 6 outdoor).
_CAMERA_CAST = {
    1: (1.06, 1.0, 0.94),
    2: (0.94, 1.0, 1.06),
    4: (1.10, 1.06, 0.92),
    5: (0.92, 0.96, 1.10),
    3: (0.95,) * 3,
    6: (1.10,) * 3,
}
_SYSU_VISIBLE, _SYSU_INFRARED = (1, 2, 4, 5), (3, 6)


def near_infrared(
    img: Image.Image,
    rng: np.random.Generator,
    weights: Sequence[float] = NIR_WEIGHTS,
    blur: Tuple[float, float] = (0.3, 0.8),
) -> Image.Image:
    """A colourless infrared-like version of ``img``: ``I = w . RGB``, gamma ``U(0.8, 1.25)``,
    gain ``U(0.85, 1.15)``, Gaussian blur of radius ``U(blur)`` and noise; three equal channels."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    inten = arr @ np.asarray(weights, dtype=np.float32)
    inten = np.clip(inten, 0.0, 1.0) ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15)
    gray = Image.fromarray(np.clip(inten * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    gray = gray.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*blur))))
    out = np.asarray(gray, dtype=np.float32)
    out = out + rng.normal(0.0, rng.uniform(2.0, 5.0), size=out.shape)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(out[:, :, None], 3, axis=2), "RGB")


def _cast(img: Image.Image, gain: Sequence[float]) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) * np.asarray(gain, dtype=np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def _render(
    attrs: PersonAttributes, modality: str, cam: int, rng: np.random.Generator, size
) -> Image.Image:
    img = render_person(attrs, rng, tuple(size))
    if modality == "visible":
        return _cast(img, _CAMERA_CAST.get(cam, (1.0,) * 3))
    weights = NIR_WEIGHTS if modality == "nir" else THERMAL_WEIGHTS
    blur = (0.3, 0.8) if modality == "nir" else (0.8, 1.4)
    return _cast(near_infrared(img, rng, weights, blur), _CAMERA_CAST.get(cam, (1.0,) * 3))


def _check_common(num_ids: int, image_size, per: int, what: str) -> None:
    if num_ids < 2:
        raise ValueError(f"num_ids must be >= 2, got {num_ids}")
    if per < 1:
        raise ValueError(f"{what} must be >= 1, got {per}")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size must be (H, W) with both >= 16, got {image_size}")


def _clear(paths: Sequence[str], overwrite: bool) -> None:
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True to replace it")
    for p in existing:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)


def sysu_split_counts(
    num_ids: int, split_counts: Optional[Sequence[int]] = None
) -> Tuple[int, int, int]:
    """(train, val, test) identity counts: given, or the release's proportions 296 / 99 / 96 of
    491 (at least one train and one test identity)."""
    if split_counts is not None:
        counts = tuple(int(c) for c in split_counts)
        if len(counts) != 3 or min(counts) < 0 or sum(counts) != num_ids:
            raise ValueError(f"split_counts {split_counts} must be 3 counts summing to {num_ids}")
    else:
        test = max(1, round(num_ids * 96 / 491))
        val = round(num_ids * 99 / 491)
        counts = (num_ids - val - test, val, test)
    if counts[0] < 1 or counts[2] < 1:
        raise ValueError(f"need at least one train and one test identity, got {counts}")
    return counts


def write_synthetic_sysu(
    root: str,
    num_ids: int = 60,
    images_per_camera: int = 4,
    seed: int = 0,
    image_size: Tuple[int, int] = (96, 48),
    split_counts: Optional[Sequence[int]] = None,
    camera_probability: float = 0.75,
    overwrite: bool = False,
    jpeg_quality: int = 90,
) -> str:
    """Write ``<root>/SYSU-MM01/cam{1..6}/<pid:04d>/<k:04d>.jpg`` and ``exp/{train,val,test}_id.txt``.

    Identities ``1..num_ids`` are shuffled into train / val / test (:func:`sysu_split_counts`).
    Each appears in every visible camera (1, 2, 4, 5) and every infrared camera (3, 6) with
    probability ``camera_probability`` (at least one camera of each modality), with
    ``images_per_camera`` images per camera. The id files hold one comma-separated line, as
    released. Returns the dataset directory.
    """
    _check_common(num_ids, image_size, images_per_camera, "images_per_camera")
    if num_ids > 9999:
        raise ValueError(f"SYSU folder names have 4 digits: num_ids must be <= 9999, got {num_ids}")
    if not 0.0 < camera_probability <= 1.0:
        raise ValueError(f"camera_probability must be in (0, 1], got {camera_probability}")
    n_train, n_val, _ = sysu_split_counts(num_ids, split_counts)
    identities = sample_identity_attributes(num_ids, np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(num_ids) + 1
    splits = {
        "train": sorted(order[:n_train].tolist()),
        "val": sorted(order[n_train : n_train + n_val].tolist()),
        "test": sorted(order[n_train + n_val :].tolist()),
    }
    dataset_dir = os.path.join(root, "SYSU-MM01")
    _clear(
        [os.path.join(dataset_dir, f"cam{c}") for c in range(1, 7)]
        + [os.path.join(dataset_dir, "exp")],
        overwrite,
    )
    for pid in range(1, num_ids + 1):
        attrs = identities[pid - 1]
        for cams in (_SYSU_VISIBLE, _SYSU_INFRARED):
            present = [c for c in cams if rng.random() < camera_probability]
            if not present:
                present = [cams[int(rng.integers(len(cams)))]]
            for cam in present:
                folder = os.path.join(dataset_dir, f"cam{cam}", f"{pid:04d}")
                os.makedirs(folder, exist_ok=True)
                modality = "visible" if cam in _SYSU_VISIBLE else "nir"
                for k in range(images_per_camera):
                    img = _render(
                        attrs,
                        modality,
                        cam,
                        np.random.default_rng([seed, 2, pid, cam, k]),
                        image_size,
                    )
                    with open(os.path.join(folder, f"{k + 1:04d}.jpg"), "wb") as f:
                        f.write(encode_jpeg(img, jpeg_quality))
    os.makedirs(os.path.join(dataset_dir, "exp"))
    for name, ids in splits.items():
        with open(os.path.join(dataset_dir, "exp", f"{name}_id.txt"), "w") as f:
            f.write(",".join(str(i) for i in ids) + "\n")
    return dataset_dir


def write_synthetic_regdb(
    root: str,
    num_ids: int = 40,
    images_per_modality: int = 10,
    num_trials: int = 10,
    seed: int = 0,
    image_size: Tuple[int, int] = (96, 48),
    overwrite: bool = False,
) -> str:
    """Write ``<root>/RegDB/{Visible,Thermal}/<pid>/*.bmp`` and ``idx/{train,test}_{visible,
    thermal}_{t}.txt`` for t = 1..num_trials.

    Each trial splits the identities at random into halves (train gets ``num_ids // 2``);
    index lines are ``<path relative to RegDB/> <label>`` with labels ``0..n-1`` in identity order
    within each split. Every identity has ``images_per_modality`` visible and thermal images
    (RegDB: 10). Returns the dataset directory.
    """
    _check_common(num_ids, image_size, images_per_modality, "images_per_modality")
    if not 1 <= num_trials <= 10:
        raise ValueError(f"num_trials must be in 1..10, got {num_trials}")
    identities = sample_identity_attributes(num_ids, np.random.default_rng([seed, 0]))
    dataset_dir = os.path.join(root, "RegDB")
    _clear([os.path.join(dataset_dir, d) for d in ("Visible", "Thermal", "idx")], overwrite)
    files = {"Visible": {}, "Thermal": {}}
    serial = 0
    for pid in range(1, num_ids + 1):
        attrs = identities[pid - 1]
        gender = "male" if attrs.gender == "man" else "female"
        for folder, tag, modality, cam in (
            ("Visible", "v", "visible", 1),
            ("Thermal", "t", "thermal", 2),
        ):
            os.makedirs(os.path.join(dataset_dir, folder, str(pid)), exist_ok=True)
            names = []
            for k in range(images_per_modality):
                serial += 1
                view = "front" if k % 2 == 0 else "back"
                rel = f"{folder}/{pid}/{gender}_{view}_{tag}_{serial:05d}_{pid}.bmp"
                rng = np.random.default_rng([seed, 2, pid, cam, k])
                _render(attrs, modality, 0, rng, image_size).save(
                    os.path.join(dataset_dir, rel), format="BMP"
                )
                names.append(rel)
            files[folder][pid] = names
    os.makedirs(os.path.join(dataset_dir, "idx"))
    n_train = num_ids // 2
    for t in range(1, num_trials + 1):
        perm = np.random.default_rng([seed, 10, t]).permutation(num_ids) + 1
        for split, ids in (("train", sorted(perm[:n_train])), ("test", sorted(perm[n_train:]))):
            for folder, name in (("Visible", "visible"), ("Thermal", "thermal")):
                path = os.path.join(dataset_dir, "idx", f"{split}_{name}_{t}.txt")
                with open(path, "w") as f:
                    for label, pid in enumerate(ids):
                        for rel in files[folder][int(pid)]:
                            f.write(f"{rel} {label}\n")
    return dataset_dir
