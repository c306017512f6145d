"""Config construction for ``fastreid-ext-train`` / ``tools/train_net.py``: the argument parser,
plugins, ``add_*_config``, file, opts, device check, setup."""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import random
from typing import Iterator, List, Optional, Sequence

import fastreid.engine.defaults as fastreid_defaults
import numpy as np
import torch
from fastreid.config import CfgNode, get_cfg
from fastreid.engine import default_argument_parser, default_setup
from fastreid.utils import comm
from fastreid.utils.logger import setup_logger

from ..config import ConfigValueError, add_fastreid_ext_config, apply_config_extensions
from ..model_zoo import SCHEME, resolve_config_path, summarize_configs
from .abort import ABORT_TIMEOUT_ENV, DEFAULT_ABORT_TIMEOUT
from .config_files import load_yaml_with_base, merge_config_file
from .plugins import load_plugins, loaded_plugin_packages
from .run_info import begin_run_record, earlier_run_files, read_run_info

__all__ = [
    "argument_parser",
    "check_device",
    "plugins_from_config_file",
    "build_cfg",
    "setup_cfg",
    "resolve_seed",
    "seed_everything",
]

logger = logging.getLogger(__name__)


def argument_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """fast-reid's parser (``--config-file --resume --eval-only --num-gpus --num-machines
    --machine-rank --dist-url`` and trailing ``KEY VALUE`` overrides) plus ``--abort-timeout``;
    ``--help`` ends with the shipped configs and the common overrides."""
    parser = default_argument_parser()
    parser.prog = prog or parser.prog
    parser.description = (
        "Train or evaluate any fastreid_ext method (Baseline, Propot, CPCL, CSDN) from a config."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _help_epilog(parser.prog)
    for action in parser._actions:
        if action.dest == "config_file":
            action.help = (
                f"config file: a path, or a shipped config's name ({SCHEME}Baseline/demo.yml)"
            )
    parser.add_argument(
        "--abort-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="when one rank of a distributed run fails, every rank ends within about this many "
        f"seconds (default: ${ABORT_TIMEOUT_ENV}, else {DEFAULT_ABORT_TIMEOUT:g})",
    )
    return parser


# The overrides most runs need, shown by --help: (KEY VALUE, what it does).
COMMON_OVERRIDES = (
    ("MODEL.DEVICE cpu", "train on the CPU (the real-data configs say cuda)"),
    ("MODEL.CLIP.WEIGHTS /path/ViT-B-16.pt", "local CLIP weights (OpenAI archive or state dict)"),
    ("DATASETS.ROOT /path/to/datasets", "CUHK-PEDES/, SYSU-MM01/, ... (else $FASTREID_DATASETS)"),
    ("OUTPUT_DIR output/my_run", "where logs, checkpoints and results.json go"),
    ("SOLVER.IMS_PER_BATCH 64", "total batch over all processes"),
    ("MODEL.WEIGHTS model_final.pth", "the checkpoint to evaluate (with --eval-only)"),
)


def _help_epilog(prog: str) -> str:
    """The shipped configs (one line per folder) and the common overrides, for ``--help``."""
    try:
        configs = "\n".join(f"  {line}" for line in summarize_configs())
    except FileNotFoundError as exc:
        configs = f"  ({exc})"
    width = max(len(key) for key, _ in COMMON_OVERRIDES) + 2
    overrides = "\n".join(f"  {key:<{width}}{what}" for key, what in COMMON_OVERRIDES)
    return (
        f"shipped configs ({SCHEME}FOLDER/NAME.yml; ablations under FOLDER/ablations/):\n"
        f"{configs}\n\n"
        f"common overrides (KEY VALUE pairs after the options):\n{overrides}\n\n"
        "examples:\n"
        f"  {prog} --config-file {SCHEME}Baseline/demo.yml OUTPUT_DIR output/my_demo\n"
        f"  {prog} --config-file {SCHEME}Propot/cuhk.yml MODEL.CLIP.WEIGHTS /path/ViT-B-16.pt\n"
        f"  {prog} --config-file {SCHEME}CSDN/sysu.yml --num-gpus 2 MODEL.DEVICE cpu\n"
        f"  {prog} --config-file {SCHEME}Propot/cuhk.yml --eval-only "
        "MODEL.WEIGHTS output/Propot/cuhk/model_final.pth"
    )


def check_device(cfg: CfgNode) -> None:
    """``MODEL.DEVICE`` names a device this machine has: ``cuda`` without a CUDA device is a
    :class:`ConfigValueError` that says to pass ``MODEL.DEVICE cpu``."""
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigValueError(
            "MODEL.DEVICE",
            device,
            "'cpu' on this machine, where torch finds no CUDA device: add MODEL.DEVICE cpu to the "
            "command (with --num-gpus N for N CPU processes)",
        )


def plugins_from_config_file(config_file: str, opts: Sequence[str] = ()) -> List[str]:
    """The ``PLUGINS`` list a config would end up with, read before any key is known.

    Plugins may add config keys, so they must be imported before the file can be merged.
    """
    plugins: List[str] = []
    if config_file:
        plugins = list(load_yaml_with_base(config_file).get("PLUGINS") or [])
    opts = list(opts or [])
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "PLUGINS":
            parsed = ast.literal_eval(value) if value.strip().startswith(("[", "(")) else [value]
            plugins = list(parsed)
    return plugins


def build_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """``get_cfg`` -> every ``add_*_config`` -> merge file -> merge opts (not frozen).

    Importing the modules named by ``PLUGINS`` (and the entry-point plugins) happens first.
    ``config_file`` is a path or a shipped config's name (``fastreid_ext://Propot/cuhk.yml``).
    """
    load_plugins(plugins_from_config_file(config_file, opts))
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build, freeze and ``default_setup`` the config for a run (logging, output dir, seeds) and
    write the run record ``OUTPUT_DIR/run_info.json`` (main process). A ``fastreid_ext://``
    config name in ``args.config_file`` is replaced by its path (fast-reid logs the file)."""
    if args.config_file:
        args.config_file = resolve_config_path(args.config_file)
    cfg = build_cfg(args.config_file, args.opts)
    check_device(cfg)
    cfg.freeze()
    # Look before default_setup creates log.txt and config.yaml in OUTPUT_DIR.
    main_process = comm.is_main_process()
    earlier = earlier_run_files(cfg.OUTPUT_DIR) if main_process else []
    previous = read_run_info(cfg.OUTPUT_DIR) if main_process else None
    with _without_fastreid_seeding():
        default_setup(cfg, args)
    setup_package_loggers(cfg.OUTPUT_DIR)
    if earlier and not getattr(args, "resume", False) and not getattr(args, "eval_only", False):
        _warn_replacing(cfg.OUTPUT_DIR, earlier, previous)
    seed = resolve_seed(cfg.SEED)
    applied = seed_everything(seed)
    logger.info(
        "Seed: SEED=%d; rank %d seeds python, numpy and torch with %d (seed + rank)",
        cfg.SEED,
        comm.get_rank(),
        applied,
    )
    begin_run_record(cfg, args, seed, previous)
    return cfg


@contextlib.contextmanager
def _without_fastreid_seeding() -> Iterator[None]:
    """Skip ``default_setup``'s ``seed_all_rng()``: it logs "Using a generated random seed ..."
    although ``SEED`` is applied right after (:func:`seed_everything`), which reads as if the run
    were not deterministic."""
    original = fastreid_defaults.seed_all_rng
    fastreid_defaults.seed_all_rng = lambda seed=None: None
    try:
        yield
    finally:
        fastreid_defaults.seed_all_rng = original


def setup_package_loggers(output_dir: str) -> None:
    """Console (rank 0) and ``OUTPUT_DIR/log.txt`` handlers for our logger and for the logger of
    every loaded plugin's top-level package (``csdn``, ``mylab``, ...): fast-reid configures only
    "fastreid", so their lines would otherwise go nowhere. Idempotent (``setup_logger`` caches)."""
    rank = comm.get_rank()
    for name in ("fastreid_ext", *loaded_plugin_packages()):
        setup_logger(output_dir, distributed_rank=rank, name=name)


def _warn_replacing(output_dir: str, earlier: List[str], previous: Optional[dict]) -> None:
    started = ""
    if previous:
        started = f" (run started {previous.get('start_time')}, {previous.get('status')})"
    shown = ", ".join(earlier[:8]) + (", ..." if len(earlier) > 8 else "")
    logger.warning(
        "OUTPUT_DIR %s already holds an earlier run's files%s: %s. This run replaces them "
        "(log.txt is appended to). Pass --resume to continue that run, or choose another "
        "OUTPUT_DIR to keep it.",
        output_dir,
        started,
        shown,
    )


def resolve_seed(seed: int) -> int:
    """``seed``, or a fresh random seed (logged) when ``seed < 0``."""
    if seed >= 0:
        return seed
    seed = int.from_bytes(os.urandom(4), "little") % (2**31 - 1)
    logger.info(
        "SEED < 0: using the generated seed %d (set SEED to it to reproduce this run)", seed
    )
    return seed


def seed_everything(seed: int, offset: int = 0) -> int:
    """Seed python, numpy and torch with ``seed + rank + offset`` (a fresh seed if ``seed < 0``);
    returns the value used."""
    value = (resolve_seed(seed) + comm.get_rank() + offset) % (2**32 - 1)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value
