"""Registry of ``add_<method>_config`` functions contributed by projects and plugins."""

from __future__ import annotations

from typing import Callable, List

from fastreid.config import CfgNode

__all__ = ["CONFIG_EXTENSIONS", "register_config", "apply_config_extensions"]

ConfigFn = Callable[[CfgNode], None]

#: Functions adding method-specific keys; applied in registration order by ``setup_cfg``.
CONFIG_EXTENSIONS: List[ConfigFn] = []


def register_config(fn: ConfigFn) -> ConfigFn:
    """Decorator: make ``fn(cfg)`` part of every config built by ``tools/train_net.py``.

    The function must add keys idempotently (it may be applied to a config that already has them).
    """
    if fn not in CONFIG_EXTENSIONS:
        CONFIG_EXTENSIONS.append(fn)
    return fn


def apply_config_extensions(cfg: CfgNode) -> None:
    """Apply every registered ``add_*_config`` to ``cfg`` in place."""
    for fn in CONFIG_EXTENSIONS:
        fn(cfg)
