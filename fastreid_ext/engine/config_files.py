"""Reading config files: ``_BASE_`` inheritance as in fast-reid, plus shipped configs by name.

:func:`load_yaml_with_base` merges a file with its ``_BASE_`` ancestors exactly like fast-reid's
``CfgNode.load_yaml_with_base`` (safe YAML, a child's mappings merged key by key into its base's,
any other value replacing the base's, a relative ``_BASE_`` relative to the file). It also
accepts ``fastreid_ext://<folder>/<name>.yml`` (:mod:`fastreid_ext.model_zoo`) as the file or as
a ``_BASE_``, which fast-reid would join to the child's folder, and it names the file in its
errors. :func:`fastreid_ext.engine.build_cfg` reads every config through it; fast-reid's own
``cfg.merge_from_file`` still reads configs that do not use ``fastreid_ext://``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import yaml
from fastreid.config import CfgNode

from ..model_zoo import SCHEME, resolve_config_path

__all__ = ["BASE_KEY", "load_yaml_with_base", "merge_config_file"]

BASE_KEY = "_BASE_"


def _merge_into(child: Dict[str, Any], base: Dict[str, Any], path: str) -> None:
    """Merge ``child`` into ``base`` in place: mappings key by key, other values replace."""
    for key, value in child.items():
        if isinstance(value, dict) and key in base:
            if not isinstance(base[key], dict):
                raise ValueError(
                    f"{path}: cannot merge the mapping '{key}' into a non-mapping base"
                )
            _merge_into(value, base[key], path)
        else:
            base[key] = value


def _base_path(base: str, child: str) -> str:
    """Where a ``_BASE_`` entry points: a shipped name, an absolute or ``~`` path, or a path
    relative to the child file's folder."""
    if base.startswith(SCHEME):
        return resolve_config_path(base)
    base = os.path.expanduser(base)
    return base if os.path.isabs(base) else os.path.join(os.path.dirname(child), base)


def load_yaml_with_base(path: str, _seen: Optional[frozenset] = None) -> Dict[str, Any]:
    """The mapping of ``path`` merged over its ``_BASE_`` chain (``_BASE_`` removed)."""
    path = os.path.abspath(resolve_config_path(path))
    seen = _seen or frozenset()
    if path in seen:
        raise ValueError(f"Config file {path} inherits from itself through {BASE_KEY}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"Config file {path} must contain a mapping at the top level")
    base = data.pop(BASE_KEY, None)
    if not base:
        return data
    merged = load_yaml_with_base(_base_path(str(base), path), seen | {path})
    _merge_into(data, merged, path)
    return merged


def merge_config_file(cfg: CfgNode, path: str) -> CfgNode:
    """``cfg.merge_from_file(path)`` through :func:`load_yaml_with_base`; returns ``cfg``."""
    cfg.merge_from_other_cfg(type(cfg)(load_yaml_with_base(path)))
    return cfg
