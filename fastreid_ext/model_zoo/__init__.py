"""The configs shipped with fastreid-ext, resolvable by name.

``get_config_file("Propot/cuhk.yml")`` is the absolute path of ``configs/Propot/cuhk.yml``;
``--config-file`` and ``_BASE_`` accept the same name as ``fastreid_ext://Propot/cuhk.yml``.
"""

from .model_zoo import (
    SCHEME,
    configs_root,
    get_config_file,
    list_configs,
    resolve_config_path,
    summarize_configs,
)

__all__ = [
    "SCHEME",
    "configs_root",
    "get_config_file",
    "list_configs",
    "resolve_config_path",
    "summarize_configs",
]
