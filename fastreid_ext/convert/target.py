"""The target side of a conversion: the fastreid_ext model a converted checkpoint must load into.

The model is built from the target config exactly as ``--eval-only`` builds it (the config's
``TRAINER.NAME`` -> ``build_model``; plugins such as ``csdn`` are imported from ``PLUGINS`` by
name), on the CPU with random CLIP weights: only its key names, shapes and config constants are
used.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from fastreid.config import CfgNode
from torch import nn

from ..engine.setup import build_cfg
from ..model_zoo import resolve_config_path
from ..registry import TRAINER_REGISTRY, lookup
from .common import ConversionError, StateDict, show_keys

__all__ = ["build_target", "check_against_target", "training_only_keys"]

# Build the target on the CPU with random CLIP weights (the checkpoint replaces all of them).
_BUILD_OPTS = ("MODEL.CLIP.WEIGHTS", "", "MODEL.CLIP.RANDOM_INIT", "True", "MODEL.DEVICE", "cpu")


def build_target(config_file: str, opts: Sequence[str]) -> Tuple[CfgNode, nn.Module]:
    """``(cfg, model)``: the config ``config_file`` (a path or ``fastreid_ext://`` name) with
    ``opts``, and the model its trainer builds from it, in eval mode on the CPU with random CLIP
    weights (``cfg`` itself keeps the config's CLIP weights and device)."""
    try:
        cfg = build_cfg(resolve_config_path(config_file), list(opts))
        build = cfg.clone()
        build.merge_from_list(list(_BUILD_OPTS))
    except Exception as exc:
        raise ConversionError(f"target config '{config_file}': {exc}") from exc
    trainer = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME")
    try:
        model = trainer.build_model(build)
    except Exception as exc:
        raise ConversionError(
            f"cannot build the target model of '{config_file}' with {list(opts)}: {exc}"
        ) from exc
    return cfg, model.eval()


def training_only_keys(model: nn.Module, keys: Sequence[str]) -> List[str]:
    """The ``keys`` under the model's ``training_only_prefixes`` (not needed to evaluate)."""
    prefixes = tuple(getattr(model, "training_only_prefixes", ()))
    return [k for k in keys if prefixes and k.startswith(prefixes)]


def check_against_target(
    state: StateDict, target: StateDict, path: str, config_file: str, opts: Sequence[str]
) -> None:
    """Every key of ``state`` exists in ``target`` with the same shape, else an error naming the
    keys, the shapes and the config (missing keys are the caller's business)."""
    where = f"the model of '{config_file}' with {' '.join(map(str, opts))}"
    unexpected = [k for k in state if k not in target]
    if unexpected:
        raise ConversionError(
            f"'{path}': {len(unexpected)} converted key(s) are not in {where}: "
            f"{show_keys(unexpected)}"
        )
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in state
        if tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if bad:
        raise ConversionError(
            f"'{path}': {len(bad)} tensor(s) do not fit {where} (checkpoint vs model): "
            f"{show_keys(bad, 4)}. Was it trained with another image size (INPUT.SIZE_TRAIN), "
            "CLIP architecture (MODEL.CLIP.NAME) or class count? Pass the matching "
            "--config-file / overrides."
        )
