"""Config construction for ``tools/train_net.py``: plugins, ``add_*_config``, file, opts, setup."""

from __future__ import annotations

import argparse
import ast
import logging
import os
import random
from typing import List, Optional, Sequence

import numpy as np
import torch
import yaml
from fastreid.config import CfgNode, get_cfg
from fastreid.engine import default_argument_parser, default_setup
from fastreid.utils import comm
from fastreid.utils.logger import setup_logger

from ..config import add_fastreid_ext_config, apply_config_extensions
from .plugins import load_plugins

__all__ = [
    "argument_parser",
    "plugins_from_config_file",
    "build_cfg",
    "setup_cfg",
    "seed_everything",
]

logger = logging.getLogger(__name__)


def argument_parser() -> argparse.ArgumentParser:
    """fast-reid's parser (``--config-file --resume --eval-only --num-gpus --num-machines
    --machine-rank --dist-url`` and trailing ``KEY VALUE`` overrides)."""
    parser = default_argument_parser()
    parser.description = "fastreid_ext training / evaluation (all methods and datasets)"
    return parser


def _read_yaml_chain(path: str, seen: Optional[set] = None) -> List[dict]:
    """Raw YAML dicts of ``path`` and its ``_BASE_`` ancestors, ancestors first."""
    seen = seen or set()
    path = os.path.abspath(path)
    if path in seen:
        raise ValueError(f"Config file {path} inherits from itself through _BASE_")
    seen.add(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"Config file {path} must contain a mapping at the top level")
    chain: List[dict] = []
    base = data.get("_BASE_")
    if base:
        if not (base.startswith("/") or "://" in base):
            base = os.path.join(os.path.dirname(path), base)
        chain.extend(_read_yaml_chain(base, seen))
    chain.append(data)
    return chain


def plugins_from_config_file(config_file: str, opts: Sequence[str] = ()) -> List[str]:
    """The ``PLUGINS`` list a config would end up with, read before any key is known.

    Plugins may add config keys, so they must be imported before the file can be merged.
    """
    plugins: List[str] = []
    if config_file:
        for data in _read_yaml_chain(config_file):
            if "PLUGINS" in data:
                plugins = list(data["PLUGINS"] or [])
    opts = list(opts or [])
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "PLUGINS":
            parsed = ast.literal_eval(value) if value.strip().startswith(("[", "(")) else [value]
            plugins = list(parsed)
    return plugins


def build_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """``get_cfg`` -> every ``add_*_config`` -> merge file -> merge opts (not frozen).

    Importing the modules named by ``PLUGINS`` (and the entry-point plugins) happens first.
    """
    load_plugins(plugins_from_config_file(config_file, opts))
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build, freeze and ``default_setup`` the config for a run (logging, output dir, seeds)."""
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # fast-reid configures the "fastreid" logger only; ours log under "fastreid_ext".
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fastreid_ext")
    seed_everything(cfg.SEED)
    return cfg


def seed_everything(seed: int, offset: int = 0) -> int:
    """Seed python, numpy and torch with ``seed + rank + offset`` (a fresh seed if ``seed < 0``)."""
    if seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") % (2**31 - 1)
        logger.info("Using random seed %d", seed)
    value = (seed + comm.get_rank() + offset) % (2**32 - 1)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value
