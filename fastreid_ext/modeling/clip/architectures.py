"""CLIP architectures as data: open_clip-schema JSON files in ``model_configs/`` or a path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_DIR", "ClipArchitectureError", "list_architectures", "load_architecture"]

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

# Features of open_clip's config schema that the ReID encoders do not support: they change the
# tower classes or the pooling, which the explicit forwards in ClipEncoders rely on.
_UNSUPPORTED_VISION = {
    "timm_model_name": None,
    "attentional_pool": False,
    "pool_type": "tok",
    "final_ln_after_pool": False,
    "pos_embed_type": "learnable",
}
_UNSUPPORTED_TEXT = {
    "hf_model_name": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "pool_type": "argmax",
    "final_ln_after_pool": False,
    "proj_type": "linear",
}
_TOP_LEVEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}


class ClipArchitectureError(ValueError):
    """An architecture name or JSON file that cannot be used (unknown, unreadable, unsupported)."""


def list_architectures() -> list[str]:
    """Names of the bundled architectures (the JSON file stems in ``model_configs/``), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _resolve(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ClipArchitectureError(f"CLIP architecture file not found: {name}")
        return path
    bundled = CONFIG_DIR / f"{name}.json"
    if not bundled.is_file():
        raise ClipArchitectureError(
            f"Unknown CLIP architecture {name!r}; bundled architectures: "
            f"{', '.join(list_architectures())}; or pass the path of a JSON file in open_clip's "
            f"config schema (embed_dim, vision_cfg, text_cfg)."
        )
    return bundled


def _validate(cfg: Any, source: str) -> None:
    if not isinstance(cfg, dict):
        raise ClipArchitectureError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ClipArchitectureError(f"{source}: missing key(s) {missing}")
    unknown = sorted(set(cfg) - _TOP_LEVEL_KEYS)
    if unknown:
        raise ClipArchitectureError(
            f"{source}: unsupported top-level key(s) {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}"
        )
    for section, rules in (("vision_cfg", _UNSUPPORTED_VISION), ("text_cfg", _UNSUPPORTED_TEXT)):
        sub = cfg[section]
        if not isinstance(sub, dict):
            raise ClipArchitectureError(f"{source}: {section} must be a JSON object")
        for key, allowed in rules.items():
            if key in sub and sub[key] != allowed:
                raise ClipArchitectureError(
                    f"{source}: {section}.{key}={sub[key]!r} is not supported by the ReID CLIP "
                    f"encoders (only {allowed!r})"
                )
    layers = cfg["vision_cfg"].get("layers", 12)
    if isinstance(layers, list) and len(layers) != 4:
        raise ClipArchitectureError(
            f"{source}: vision_cfg.layers must be an int (ViT) or 4 ints (ModifiedResNet), "
            f"got {layers}"
        )


def load_architecture(name: str) -> dict[str, Any]:
    """Read an architecture config.

    Args:
        name: a bundled name (see :func:`list_architectures`) or the path of a JSON file in
            open_clip's schema ``{"embed_dim", "vision_cfg", "text_cfg", optional "quick_gelu"}``.

    Returns:
        A fresh (deep-copied) dict; ``vision_cfg.layers`` is an int for a ViT and a list of 4 ints
        for a ModifiedResNet.
    """
    path = _resolve(name)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ClipArchitectureError(f"Cannot read CLIP architecture file {path}: {e}") from e
    _validate(cfg, str(path))
    return copy.deepcopy(cfg)
