"""Transform registry and the CAJ channel augmentations (Ye et al., ICCV 2021) for VI-ReID.

Images are float tensors ``[3, H, W]`` in [0, 255] (fast-reid's convention; the model normalises
with ``MODEL.PIXEL_MEAN / PIXEL_STD``). CAJ applies its channel operations to the *normalised*
tensor, so each operation here maps the image to normalised space ``z = (x - mean) / std``,
acts there, and maps back: after the model's normalisation the result is exactly CAJ's.
All randomness comes from the torch RNG (re-seeded per epoch by the trainer, per worker by torch).
"""

from __future__ import annotations

import math
from typing import Callable, List, Sequence

import torch
import torchvision.transforms as T
from fastreid.config import CfgNode

from ...registry import ExtRegistry, lookup
from ..transforms import ToTensor255
from .base import INFRARED, VISIBLE

__all__ = [
    "TRANSFORM_REGISTRY",
    "ChannelRandomErasing",
    "ChannelExchange",
    "ChannelAdapGray",
    "build_registered_transforms",
    "build_vi_transforms",
]

TRANSFORM_REGISTRY = ExtRegistry("TRANSFORM")
TRANSFORM_REGISTRY.__doc__ = (
    "Tensor transforms selected by name in configs (INPUT.VI.*); each class has a classmethod "
    "``from_config(cfg)`` and maps a float image [3, H, W] to a new one."
)

#: ITU-R 601 luminance weights used by CAJ's gray conversion.
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
_INTERPOLATION = {
    "lanczos": T.InterpolationMode.LANCZOS,
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
}


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] (both inclusive, as ``random.randint``)."""
    return int(torch.randint(low, high + 1, ()).item())


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()).item())


class _NormalisedSpaceOp:
    """Base: holds the normalisation ``mean``/``std`` (pixel units, per channel)."""

    def __init__(self, mean: Sequence[float] = (0.0,) * 3, std: Sequence[float] = (1.0,) * 3):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must have 3 entries with std > 0, got {mean} / {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def _check(self, img: torch.Tensor) -> None:
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"{type(self).__name__} expects a [3, H, W] tensor, got {img.shape}")

    def _fill_from_normalised(self, img: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Every channel k becomes ``mean_k + std_k * z`` (z: [H, W] or [3, H, W])."""
        return (self.mean + self.std * z).to(img.dtype).expand_as(img).clone()

    def _normalised(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() - self.mean) / self.std

    def _copy_channel(self, img: torch.Tensor, c: int) -> torch.Tensor:
        return self._fill_from_normalised(img, self._normalised(img)[c])

    def _gray(self, img: torch.Tensor) -> torch.Tensor:
        z = self._normalised(img)
        g = _GRAY_WEIGHTS[0] * z[0] + _GRAY_WEIGHTS[1] * z[1] + _GRAY_WEIGHTS[2] * z[2]
        return self._fill_from_normalised(img, g)


@TRANSFORM_REGISTRY.register()
class ChannelRandomErasing(_NormalisedSpaceOp):
    """CAJ's random erasing: with probability ``prob``, up to 100 attempts to place a rectangle of
    area ``U(area) * H * W`` and aspect ``U(min_aspect, 1 / min_aspect)`` (h = round(sqrt(a *
    r)), w = round(sqrt(a / r)), accepted if h < H and w < W); it is filled with ``value``
    (normalised space, per channel)."""

    def __init__(
        self,
        prob: float = 0.5,
        area: Sequence[float] = (0.02, 0.4),
        min_aspect: float = 0.3,
        value: Sequence[float] = (0.4914, 0.4822, 0.4465),
        mean: Sequence[float] = (0.0,) * 3,
        std: Sequence[float] = (1.0,) * 3,
    ) -> None:
        super().__init__(mean, std)
        if not 0.0 <= prob <= 1.0 or not 0 < area[0] <= area[1] or not 0 < min_aspect <= 1:
            raise ValueError(
                f"ChannelRandomErasing: bad prob {prob}, area {area} or min_aspect {min_aspect}"
            )
        self.prob, self.area, self.min_aspect = prob, tuple(area), min_aspect
        self.fill = self.mean + self.std * torch.tensor(value, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ChannelRandomErasing:
        vi = cfg.INPUT.VI
        return cls(
            vi.ERASING_PROB,
            vi.ERASING_AREA,
            vi.ERASING_MIN_ASPECT,
            vi.ERASING_VALUE,
            cfg.MODEL.PIXEL_MEAN,
            cfg.MODEL.PIXEL_STD,
        )

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self._check(img)
        if _uniform(0.0, 1.0) > self.prob:
            return img
        _, height, width = img.shape
        for _ in range(100):
            target = _uniform(*self.area) * height * width
            aspect = _uniform(self.min_aspect, 1.0 / self.min_aspect)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top, left = _randint(0, height - h), _randint(0, width - w)
                out = img.clone()
                out[:, top : top + h, left : left + w] = self.fill.to(img.dtype)
                return out
        return img


@TRANSFORM_REGISTRY.register()
class ChannelExchange(_NormalisedSpaceOp):
    """CAJ's channel exchange: idx ~ U{0..gray}; idx 0-2 copies that channel into all three,
    any idx >= 3 (reachable when gray >= 3) gives the luminance gray image, so a larger ``gray``
    makes gray images more likely (as CAJ, which accepts any ``gray >= 0``)."""

    def __init__(
        self, gray: int = 2, mean: Sequence[float] = (0.0,) * 3, std: Sequence[float] = (1.0,) * 3
    ) -> None:
        super().__init__(mean, std)
        if int(gray) != gray or gray < 0:
            raise ValueError(
                f"ChannelExchange: gray (INPUT.VI.EXCHANGE_GRAY) must be an integer >= 0, got {gray}"
            )
        self.gray = int(gray)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ChannelExchange:
        return cls(cfg.INPUT.VI.EXCHANGE_GRAY, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self._check(img)
        idx = _randint(0, self.gray)
        return self._copy_channel(img, idx) if idx < 3 else self._gray(img)


@TRANSFORM_REGISTRY.register()
class ChannelAdapGray(_NormalisedSpaceOp):
    """CAJ's adaptive gray: idx ~ U{0..3}; idx 0-2 copies that channel into all three; idx 3
    gives the luminance gray image with probability ``prob`` and the image unchanged otherwise."""

    def __init__(
        self,
        prob: float = 0.5,
        mean: Sequence[float] = (0.0,) * 3,
        std: Sequence[float] = (1.0,) * 3,
    ) -> None:
        super().__init__(mean, std)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"ChannelAdapGray: prob must be in [0, 1], got {prob}")
        self.prob = prob

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ChannelAdapGray:
        return cls(cfg.INPUT.VI.ADAP_GRAY_PROB, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self._check(img)
        idx = _randint(0, 3)
        if idx < 3:
            return self._copy_channel(img, idx)
        if _uniform(0.0, 1.0) > self.prob:
            return img
        return self._gray(img)


def build_registered_transforms(cfg: CfgNode, names: Sequence[str], key: str) -> List[Callable]:
    """Instantiate the registered transforms ``names`` (config key ``key`` for errors)."""
    return [lookup(TRANSFORM_REGISTRY, n, key).from_config(cfg) for n in names]


def build_vi_transforms(
    cfg: CfgNode, is_train: bool, modality: int = VISIBLE, view: int = 0
) -> T.Compose:
    """The AGW / CAJ / CSDN pipeline from ``INPUT`` keys.

    Train: Resize(SIZE_TRAIN, INPUT.VI.INTERPOLATION) -> [Pad(PADDING.SIZE) + RandomCrop] ->
    [RandomHorizontalFlip(FLIP.PROB)] -> tensor in [0, 255] -> the registered augmentations of
    ``INPUT.VI.VISIBLE_AUG_VIEWS[view]`` (visible) or ``INPUT.VI.INFRARED_AUG`` (infrared).
    Test: Resize(SIZE_TEST) -> tensor.
    """
    vi = cfg.INPUT.VI
    if vi.INTERPOLATION not in _INTERPOLATION:
        raise KeyError(
            f"INPUT.VI.INTERPOLATION must be one of {sorted(_INTERPOLATION)}: {vi.INTERPOLATION}"
        )
    size = tuple(cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST)
    ops: List[Callable] = [T.Resize(size, interpolation=_INTERPOLATION[vi.INTERPOLATION])]
    if not is_train:
        return T.Compose(ops + [ToTensor255()])
    if cfg.INPUT.PADDING.ENABLED:
        ops.append(
            T.RandomCrop(size, padding=cfg.INPUT.PADDING.SIZE, padding_mode=cfg.INPUT.PADDING.MODE)
        )
    if cfg.INPUT.FLIP.ENABLED:
        ops.append(T.RandomHorizontalFlip(p=cfg.INPUT.FLIP.PROB))
    ops.append(ToTensor255())
    if modality == INFRARED:
        ops += build_registered_transforms(cfg, vi.INFRARED_AUG, "INPUT.VI.INFRARED_AUG")
    else:
        views = vi.VISIBLE_AUG_VIEWS
        if not 0 <= view < len(views):
            raise IndexError(f"INPUT.VI.VISIBLE_AUG_VIEWS has {len(views)} views, asked for {view}")
        ops += build_registered_transforms(cfg, views[view], f"INPUT.VI.VISIBLE_AUG_VIEWS[{view}]")
    return T.Compose(ops)
