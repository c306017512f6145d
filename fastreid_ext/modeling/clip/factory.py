"""create_clip: build an open_clip CLIP at a ReID image size and load local weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from .architectures import ClipArchitectureError, load_architecture
from .encoders import ClipEncoders
from .weights import ClipWeightsError, load_clip_weights, resolve_weights_path

__all__ = ["create_clip", "vit_grid_size", "resnet_grid_size"]

logger = logging.getLogger(__name__)


def vit_grid_size(image_size: tuple[int, int], patch: int, stride: int = 0) -> tuple[int, int]:
    """Patch grid of a ViT: ``((H - P) // s + 1, (W - P) // s + 1)``; ``stride`` 0 means ``P``."""
    s = stride or patch
    return tuple((n - patch) // s + 1 for n in image_size)


def resnet_grid_size(image_size: tuple[int, int], last_stride_1: bool = False) -> tuple[int, int]:
    """Layer4 grid of a ModifiedResNet: stem conv stride 2 (padding 1) then 2x2 average pools
    (stem, layer2, layer3 and, unless ``last_stride_1``, layer4), each rounding down."""
    pools = 3 if last_stride_1 else 4
    out = []
    for n in image_size:
        n = (n + 1) // 2
        for _ in range(pools):
            n //= 2
        out.append(n)
    return tuple(out)


def _check_size(image_size, name: str) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(n) <= 0 for n in image_size):
        raise ClipArchitectureError(
            f"image_size must be (H, W) with positive ints, got {image_size!r} for CLIP {name}"
        )
    return int(image_size[0]), int(image_size[1])


def _build_vit(cfg: dict, size: tuple[int, int], stride: int, quick_gelu: bool, name: str):
    vision = cfg["vision_cfg"]
    patch = int(vision.get("patch_size", CLIPVisionCfg.patch_size))
    if stride < 0 or stride > patch:
        raise ClipArchitectureError(
            f"VIT_STRIDE={stride} for CLIP {name}: use 0 (= patch size) or 1..{patch}"
        )
    if min(size) < patch:
        raise ClipArchitectureError(f"image size {size} is smaller than the patch size {patch}")
    if stride in (0, patch) and (size[0] % patch or size[1] % patch):
        raise ClipArchitectureError(
            f"image size {size} is not a multiple of the patch size {patch} of CLIP {name}"
        )
    vision["image_size"] = list(size)
    model = CLIP(cfg["embed_dim"], vision, cfg["text_cfg"], quick_gelu=quick_gelu)
    grid = vit_grid_size(size, patch, stride)
    v = model.visual
    if stride and stride != patch:
        old = v.conv1
        v.conv1 = nn.Conv2d(3, old.out_channels, kernel_size=patch, stride=stride, bias=False)
        with torch.no_grad():
            v.conv1.weight.copy_(old.weight)
        width = v.positional_embedding.shape[1]
        v.positional_embedding = nn.Parameter(
            torch.randn(grid[0] * grid[1] + 1, width) * width**-0.5
        )
        v.grid_size = grid
    return model, grid


def _build_resnet(cfg: dict, size: tuple[int, int], last_stride_1: bool, quick_gelu: bool):
    # open_clip's ModifiedResNet only takes a square int size: build at the config's size, then
    # replace the attention-pool position table by one for the (H, W) layer4 grid.
    vision = cfg["vision_cfg"]
    vision["image_size"] = int(vision.get("image_size", 224))
    model = CLIP(cfg["embed_dim"], vision, cfg["text_cfg"], quick_gelu=quick_gelu)
    v = model.visual
    if last_stride_1:
        block = v.layer4[0]
        block.avgpool = nn.Identity()
        if block.downsample is not None:
            block.downsample[0] = nn.Identity()  # the AvgPool2d in front of the 1x1 conv
    grid = resnet_grid_size(size, last_stride_1)
    if min(grid) < 1:
        raise ClipArchitectureError(f"image size {size} is too small for a ModifiedResNet")
    pool = v.attnpool
    width = pool.positional_embedding.shape[1]
    pool.positional_embedding = nn.Parameter(torch.randn(grid[0] * grid[1] + 1, width) / width**0.5)
    v.image_size = size
    return model, grid


def create_clip(
    name: str,
    image_size: tuple[int, int],
    weights: str = "",
    random_init: bool = False,
    quick_gelu: bool = True,
    vit_stride: int = 0,
    rn_last_stride_1: bool = False,
    context_length: int = 77,
) -> ClipEncoders:
    """Build CLIP image and text encoders for ReID.

    Args:
        name: bundled architecture (``ViT-B-16``, ``RN50``, ``tiny-vit``, ``tiny-rn``) or the path
            of a JSON file in open_clip's config schema.
        image_size: ``(H, W)`` input size, e.g. ``(384, 128)``; non-square sizes are supported.
        weights: local checkpoint (OpenAI TorchScript archive or open_clip / plain state dict).
            The image position grid is resized bilinearly (CLS kept). Hub tags are rejected.
        random_init: build with random weights; required (and only allowed) when ``weights`` is
            empty.
        quick_gelu: QuickGELU activations (OpenAI weights); a JSON ``"quick_gelu": true`` forces it.
        vit_stride: ViT patch-embedding stride (0 = patch size); smaller gives overlapping patches
            and a grid of ``((H - P) // s + 1, (W - P) // s + 1)``.
        rn_last_stride_1: ResNet: no down-sampling in layer4 (layer4 grid ``H/16 x W/16``).
        context_length: text positions (<= the checkpoint's; a longer table is cut).

    Returns:
        :class:`ClipEncoders` in train mode, fp32, on the CPU.

    Raises:
        ClipArchitectureError: unknown / unsupported architecture or image size.
        ClipWeightsError: weights missing, a hub tag, unreadable, or not matching the architecture.
    """
    cfg = load_architecture(name)
    arch = Path(name).stem if name.endswith(".json") else name
    size = _check_size(image_size, arch)
    if weights and random_init:
        raise ClipWeightsError(
            f"CLIP {arch}: both weights ({weights}) and random_init are set; set exactly one "
            f"of MODEL.CLIP.WEIGHTS and MODEL.CLIP.RANDOM_INIT"
        )
    if not weights and not random_init:
        raise ClipWeightsError(
            f"CLIP {arch}: no weights given. Set MODEL.CLIP.WEIGHTS to a local checkpoint "
            f"(e.g. ViT-B-16.pt from OpenAI; hub downloads are disabled), or set "
            f"MODEL.CLIP.RANDOM_INIT True (random_init=True) for random weights."
        )
    path = resolve_weights_path(weights, arch) if weights else None
    if context_length < 1:
        raise ClipArchitectureError(f"context_length must be positive, got {context_length}")
    cfg["text_cfg"]["context_length"] = int(context_length)
    try:
        CLIPVisionCfg(**cfg["vision_cfg"])
        CLIPTextCfg(**cfg["text_cfg"])
    except TypeError as e:
        raise ClipArchitectureError(f"CLIP architecture {name}: {e}") from e
    quick_gelu = bool(quick_gelu or cfg.get("quick_gelu", False))
    if isinstance(cfg["vision_cfg"].get("layers", 12), list):
        if vit_stride:
            raise ClipArchitectureError(f"VIT_STRIDE={vit_stride} given for ResNet CLIP {arch}")
        model, grid = _build_resnet(cfg, size, rn_last_stride_1, quick_gelu)
    else:
        if rn_last_stride_1:
            raise ClipArchitectureError(f"RN_LAST_STRIDE_1 given for ViT CLIP {arch}")
        model, grid = _build_vit(cfg, size, vit_stride, quick_gelu, arch)
    if path is not None:
        is_vit = not isinstance(cfg["vision_cfg"].get("layers", 12), list)
        load_clip_weights(model, path, arch, grid, is_vit)
        logger.info("Loaded CLIP %s weights from %s at image size %s", arch, path, size)
    return ClipEncoders(model, size, grid, arch)
