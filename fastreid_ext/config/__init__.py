"""Configuration: fast-reid's ``get_cfg`` plus the shared and per-method ``add_*_config`` keys."""

from .defaults import add_fastreid_ext_config
from .extensions import CONFIG_EXTENSIONS, apply_config_extensions, register_config
from .validation import ConfigValueError, check_choice, check_choices, check_range

__all__ = [
    "ConfigValueError",
    "check_choice",
    "check_choices",
    "check_range",
    "add_fastreid_ext_config",
    "CONFIG_EXTENSIONS",
    "apply_config_extensions",
    "register_config",
]
