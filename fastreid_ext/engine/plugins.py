"""Loading out-of-tree methods: ``cfg.PLUGINS`` modules and the ``fastreid_ext.plugins`` entry points."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Iterable

__all__ = ["ENTRY_POINT_GROUP", "load_plugins", "load_entry_point_plugins"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fastreid_ext.plugins"


def load_entry_point_plugins() -> list[str]:
    """Import every module advertised in the ``fastreid_ext.plugins`` entry-point group."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            raise ImportError(
                f"Plugin entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) failed to "
                f"import: {exc}"
            ) from exc
        loaded.append(ep.value)
    return loaded


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import entry-point plugins, then each module named in ``modules`` (``cfg.PLUGINS``).

    Importing is what registers a method's datasets, backbones, meta-architectures, hooks and
    evaluators, so this runs before the config is merged and anything is built.
    """
    loaded = load_entry_point_plugins()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"PLUGINS entry '{name}' could not be imported: {exc}") from exc
        loaded.append(name)
    if loaded:
        logger.info("Loaded plugins: %s", ", ".join(loaded))
    return loaded
