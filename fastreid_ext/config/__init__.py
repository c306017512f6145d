"""Configuration: fast-reid's ``get_cfg`` plus the shared ``add_fastreid_ext_config`` keys."""

from .defaults import add_fastreid_ext_config

__all__ = ["add_fastreid_ext_config"]
