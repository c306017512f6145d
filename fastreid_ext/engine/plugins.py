"""Loading out-of-tree methods: ``cfg.PLUGINS`` modules and the ``fastreid_ext.plugins`` entry points."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Iterable

__all__ = [
    "ENTRY_POINT_GROUP",
    "load_plugins",
    "load_entry_point_plugins",
    "loaded_plugin_packages",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fastreid_ext.plugins"
# Packages whose loggers fastreid/fastreid_ext configure themselves.
_OWN_PACKAGES = ("fastreid", "fastreid_ext")
# Every plugin module imported by this process, in import order.
_loaded: list[str] = []


def _remember(module: str) -> None:
    if module not in _loaded:
        _loaded.append(module)


def loaded_plugin_packages() -> list[str]:
    """Top-level packages of every plugin imported so far (``csdn`` for ``csdn`` or
    ``csdn.trainer:X``), without fastreid's and ours: their loggers need a handler of their own."""
    packages: list[str] = []
    for module in _loaded:
        top = module.split(":", 1)[0].split(".", 1)[0].strip()
        if top and top not in _OWN_PACKAGES and top not in packages:
            packages.append(top)
    return packages


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
        _remember(ep.value)
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
        _remember(name)
    if loaded:
        logger.info("Loaded plugins: %s", ", ".join(loaded))
    return loaded
