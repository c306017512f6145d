"""Image transforms for CLIP-based ReID (pixel values in [0, 255]; the model normalises)."""

from __future__ import annotations

from typing import List

import torch
import torchvision.transforms as T
from fastreid.config import CfgNode
from PIL import Image

__all__ = ["ToTensor255", "build_image_transforms"]


class ToTensor255:
    """PIL image -> float tensor [3, H, W] with values in [0, 255] (fast-reid's convention)."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return T.functional.pil_to_tensor(img.convert("RGB")).float()

    def __repr__(self) -> str:
        return "ToTensor255()"


def build_image_transforms(cfg: CfgNode, is_train: bool) -> T.Compose:
    """IRRA-style transforms from fast-reid's ``INPUT`` keys.

    Train: Resize(SIZE_TRAIN, bicubic) -> [flip] -> [pad + random crop] -> tensor -> [random
    erasing filled with the pixel mean, so it becomes 0 after the model's normalisation].
    Test: Resize(SIZE_TEST, bicubic) -> tensor. Normalisation happens in the model, out of place.
    """
    size = tuple(cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST)
    ops: List = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)]
    if is_train:
        if cfg.INPUT.FLIP.ENABLED:
            ops.append(T.RandomHorizontalFlip(p=cfg.INPUT.FLIP.PROB))
        if cfg.INPUT.PADDING.ENABLED:
            ops.append(
                T.RandomCrop(
                    size, padding=cfg.INPUT.PADDING.SIZE, padding_mode=cfg.INPUT.PADDING.MODE
                )
            )
    ops.append(ToTensor255())
    if is_train and cfg.INPUT.REA.ENABLED:
        ops.append(
            T.RandomErasing(
                p=cfg.INPUT.REA.PROB, scale=(0.02, 0.4), value=list(cfg.MODEL.PIXEL_MEAN)
            )
        )
    return T.Compose(ops)
