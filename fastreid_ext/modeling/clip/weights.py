"""Local CLIP checkpoints: read OpenAI / open_clip files, resize position grids, load strictly."""

from __future__ import annotations

import logging
import math
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.pretrained import list_pretrained, list_pretrained_tags_by_model
from torch import nn

__all__ = [
    "ClipWeightsError",
    "read_clip_state_dict",
    "resize_grid_pos_embed",
    "resolve_weights_path",
    "load_clip_weights",
]

logger = logging.getLogger(__name__)

# Metadata entries of OpenAI's TorchScript archives, not parameters.
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors", ".pkl"}
_HOW_TO = (
    "pass a local checkpoint file, e.g. MODEL.CLIP.WEIGHTS=/path/to/ViT-B-16.pt (OpenAI's "
    "TorchScript archive) or an open_clip / plain state dict; hub downloads are disabled"
)


class ClipWeightsError(ValueError):
    """CLIP weights that cannot be used: missing file, hub tag, bad format, key or shape mismatch."""


def _looks_like_hub_tag(weights: str) -> bool:
    known = {tag for _, tag in list_pretrained()}
    if weights in known or weights.startswith("hf-hub:"):
        return True
    has_dir = "/" in weights or "\\" in weights
    return not has_dir and Path(weights).suffix.lower() not in _CHECKPOINT_SUFFIXES


def resolve_weights_path(weights: str, arch_name: str) -> Path:
    """Check that ``weights`` names an existing local file and return it.

    Raises:
        ClipWeightsError: for a hub tag such as ``"openai"`` or ``"laion2b_s34b_b88k"``, a
            directory, or a missing file; the message says what to pass instead.
    """
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ClipWeightsError(f"CLIP weights {weights!r} is a directory; {_HOW_TO}.")
    if _looks_like_hub_tag(weights):
        tags = list_pretrained_tags_by_model(Path(arch_name).stem)
        known = f" (open_clip tags for {arch_name}: {', '.join(tags)})" if tags else ""
        raise ClipWeightsError(
            f"CLIP weights {weights!r} looks like an open_clip hub tag{known}, which is not "
            f"supported: {_HOW_TO}."
        )
    raise ClipWeightsError(f"CLIP weights file not found: {weights}; {_HOW_TO}.")


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/__torch__" in n for n in names)


def _load_raw(path: Path) -> object:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CLIP checkpoint into a plain fp32 state dict with OpenAI / open_clip key names.

    Accepts an OpenAI TorchScript archive, a ``torch.save``'d state dict (optionally wrapped as
    ``{"state_dict": ...}`` and/or with ``module.`` key prefixes) or a ``.safetensors`` file.
    Non-archive files are read with ``torch.load(weights_only=True)``. OpenAI's metadata keys
    (input_resolution, context_length, vocab_size) are dropped; floating tensors become fp32.
    """
    path = Path(path)
    try:
        obj = _load_raw(path)
    except Exception as e:  # unpickling / archive errors: re-raise naming the file
        raise ClipWeightsError(f"Cannot read CLIP weights file {path}: {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ClipWeightsError(
            f"CLIP weights file {path} holds a {type(obj).__name__}, not a state dict"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        key = str(key).removeprefix("module.")
        if key in _OPENAI_META_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise ClipWeightsError(
                f"CLIP weights file {path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state[key] = value.float() if value.is_floating_point() else value
    return state


def resize_grid_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a position embedding ``[1 + g*g, C]`` (token 0 kept) to ``[1 + gh*gw, C]``.

    The old grid must be square (as in every released CLIP); the grid part is resized with
    bilinear interpolation, ``align_corners=False``, no antialiasing (the CLIP-ReID / IRRA formula).
    """
    old = int(round(math.sqrt(pos.shape[0] - 1)))
    if old * old != pos.shape[0] - 1:
        raise ClipWeightsError(
            f"cannot resize a position embedding of {pos.shape[0] - 1} grid tokens: not a square grid"
        )
    gh, gw = grid
    if (old, old) == (gh, gw):
        return pos
    img = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(gh, gw), mode="bilinear", align_corners=False, antialias=False)
    img = img.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([pos[:1], img], dim=0)


def _adapt(state: dict, model: nn.Module, grid: tuple[int, int], is_vit: bool) -> None:
    target = model.state_dict()
    grid_key = "visual.positional_embedding" if is_vit else "visual.attnpool.positional_embedding"
    if grid_key in state and grid_key in target and state[grid_key].shape != target[grid_key].shape:
        if state[grid_key].shape[1] == target[grid_key].shape[1]:
            old_shape = tuple(state[grid_key].shape)
            state[grid_key] = resize_grid_pos_embed(state[grid_key], grid)
            logger.info("Resized %s from %s to grid %s", grid_key, old_shape, grid)
    text_key = "positional_embedding"
    if text_key in state and text_key in target:
        n_model, n_ckpt = target[text_key].shape[0], state[text_key].shape[0]
        if n_ckpt > n_model and state[text_key].shape[1] == target[text_key].shape[1]:
            state[text_key] = state[text_key][:n_model]
    if "logit_scale" not in target:
        state.pop("logit_scale", None)


def _few(keys: list[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_clip_weights(
    model: nn.Module, path: str | Path, arch_name: str, grid: tuple[int, int], is_vit: bool
) -> None:
    """Load a local checkpoint into an open_clip ``CLIP`` built at the ReID image size.

    Args:
        model: the open_clip ``CLIP`` (OpenAI key names).
        path: checkpoint file (see :func:`read_clip_state_dict`).
        arch_name: architecture name, used in error messages.
        grid: the model's position grid (ViT patch grid, or the ResNet attention-pool grid).
        is_vit: whether the image tower is a VisionTransformer (else a ModifiedResNet).

    The image position grid is resized with :func:`resize_grid_pos_embed`; a longer text position
    table is cut to the model's context length. Loading is strict.

    Raises:
        ClipWeightsError: listing missing / unexpected keys or shape mismatches.
    """
    state = read_clip_state_dict(path)
    _adapt(state, model, grid, is_vit)
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise ClipWeightsError(
            f"CLIP weights {path} do not match architecture {arch_name!r}: "
            f"{len(missing)} missing key(s) [{_few(missing)}], "
            f"{len(unexpected)} unexpected key(s) [{_few(unexpected)}]"
        )
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in target.items()
        if state[k].shape != v.shape
    ]
    if bad:
        raise ClipWeightsError(
            f"CLIP weights {path} do not match architecture {arch_name!r}: "
            f"{len(bad)} shape mismatch(es): {'; '.join(bad[:5])}"
        )
    model.load_state_dict(state, strict=True)
