"""Rebuilding a trained model from ``config + weights`` without its training set.

:func:`load_trained_model` is what :meth:`fastreid_ext.inference.Predictor.from_config` does
before it encodes anything: the config is built as ``tools/train_net.py`` builds it (plugins,
``add_*_config``, ``_BASE_`` chain, overrides), the training-class count comes from the
checkpoint (:func:`~fastreid_ext.engine.checkpoint.resolve_num_classes`), the model is built with
random CLIP weights (the trained checkpoint replaces every tensor, so ``MODEL.CLIP.WEIGHTS`` need
not exist here) and the checkpoint is loaded strictly
(:func:`~fastreid_ext.engine.checkpoint.load_for_inference`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from fastreid.config import CfgNode, get_cfg
from torch import nn

from ..config import ConfigValueError, add_fastreid_ext_config, apply_config_extensions
from ..engine.checkpoint import (
    NUM_CLASSES_KEY,
    load_for_inference,
    read_model_info,
    resolve_num_classes,
)
from ..engine.setup import build_cfg
from ..evaluation.t2i_evaluator import TextImageEvaluator
from ..evaluation.vi_evaluator import VIReIDEvaluator
from ..model_zoo import resolve_config_path
from ..registry import EVALUATOR_REGISTRY, TRAINER_REGISTRY, lookup

__all__ = [
    "TEXT_IMAGE",
    "VISIBLE_INFRARED",
    "FINGERPRINT_NODES",
    "FINGERPRINT_IGNORED_KEYS",
    "resolve_device",
    "task_of",
    "fingerprint",
    "load_trained_model",
]

logger = logging.getLogger(__name__)

TEXT_IMAGE, VISIBLE_INFRARED = "text-image", "visible-infrared"
#: The config nodes that determine the features (architecture, test transform, tokenizer) ...
FINGERPRINT_NODES = ("MODEL", "INPUT")
#: ... less the keys inside them that say where things are, not what the features are (the
#: weights enter the fingerprint by their bytes).
FINGERPRINT_IGNORED_KEYS = (
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "MODEL.CLIP.WEIGHTS",
    "MODEL.CLIP.RANDOM_INIT",
)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch finds no CUDA device here; use 'cpu'")
    return dev


def task_of(cfg: CfgNode) -> str:
    """:data:`TEXT_IMAGE` or :data:`VISIBLE_INFRARED`, from the config's evaluator
    (``TEST.EVALUATOR``: a :class:`TextImageEvaluator` or :class:`VIReIDEvaluator`, or a
    subclass)."""
    name = cfg.TEST.EVALUATOR
    if not name:
        raise ConfigValueError(
            "TEST.EVALUATOR", name, "TextImageEvaluator or VIReIDEvaluator (or a subclass)"
        )
    evaluator = lookup(EVALUATOR_REGISTRY, name, "TEST.EVALUATOR")
    if issubclass(evaluator, TextImageEvaluator):
        return TEXT_IMAGE
    if issubclass(evaluator, VIReIDEvaluator):
        return VISIBLE_INFRARED
    raise ConfigValueError(
        "TEST.EVALUATOR", name, "TextImageEvaluator or VIReIDEvaluator (or a subclass)"
    )


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _leaves(node: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"A.B.C": value}`` of every leaf of a config node."""
    out: Dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            out.update(_leaves(value, path + "."))
        else:
            out[path] = value
    return out


def fingerprint(cfg: CfgNode, weights: str) -> str:
    """16 hex digits of sha256 over the feature-defining config values and the sha256 of the
    weights file's bytes: equal for the same model and preprocessing on any machine, device,
    path or process, whatever the training, evaluation or data-location keys say.

    The config values hashed: every key of :data:`FINGERPRINT_NODES` but
    :data:`FINGERPRINT_IGNORED_KEYS`; of the keys a plugin adds (``MODEL.<METHOD>``), those that
    differ from their default -- a process that imported other methods has their nodes too, at
    their defaults, and they must not change the fingerprint.
    """
    core = get_cfg()
    add_fastreid_ext_config(core)
    core_keys = set(_leaves(core))
    defaults = core.clone()
    apply_config_extensions(defaults)
    default_values = _leaves(defaults)
    missing = object()
    items = {
        path: value
        for path, value in _leaves(cfg).items()
        if path.split(".", 1)[0] in FINGERPRINT_NODES
        and path not in FINGERPRINT_IGNORED_KEYS
        and (path in core_keys or default_values.get(path, missing) != value)
    }
    text = json.dumps(sorted(items.items()), default=repr)
    return hashlib.sha256(f"{text}\0{_file_sha256(weights)}".encode()).hexdigest()[:16]


def _check_architecture(cfg: CfgNode, weights: str) -> None:
    info = read_model_info(weights)
    stored = (info or {}).get("meta_architecture")
    if stored and stored != cfg.MODEL.META_ARCHITECTURE:
        raise ValueError(
            f"checkpoint '{weights}' holds a {stored} model but the config builds "
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE}: pass the config it was "
            "trained with"
        )


def load_trained_model(
    config_file: str | Path,
    weights: Optional[str | Path] = None,
    opts: Sequence[str] = (),
    device: str = "auto",
) -> Tuple[CfgNode, nn.Module, str]:
    """``(cfg, model, weights path)``: the frozen config (``MODEL.WEIGHTS``, ``MODEL.DEVICE``
    and ``MODEL.HEADS.NUM_CLASSES`` set), the trained model in eval mode on ``device``.

    Raises:
        FileNotFoundError: the config or the weights file does not exist (named).
        ValueError: the checkpoint does not fit the config (missing / unexpected / mis-shaped
            keys, another meta-architecture, a contradicting ``MODEL.HEADS.NUM_CLASSES``).
    """
    config_file = resolve_config_path(str(config_file))
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file '{config_file}' does not exist")
    cfg = build_cfg(config_file, list(opts))
    path = str(weights) if weights is not None else cfg.MODEL.WEIGHTS
    key = "weights" if weights is not None else "MODEL.WEIGHTS"
    if not path:
        raise ValueError("no weights: pass weights= (--weights) or MODEL.WEIGHTS in opts")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: checkpoint file '{path}' does not exist")
    dev = resolve_device(device)
    cfg.MODEL.WEIGHTS = os.path.abspath(path)
    cfg.MODEL.DEVICE = str(dev)
    task_of(cfg)  # an unsupported evaluator fails before the model is built
    _check_architecture(cfg, path)
    trainer_cls = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME")
    num_classes = resolve_num_classes(cfg, trainer_cls.build_model, path, key)
    if num_classes is None and not cfg.MODEL.HEADS.NUM_CLASSES:
        # the inference weights do not depend on the count: any count builds the same encoders
        num_classes = 1 if _needs_classes(cfg, trainer_cls) else 0
        logger.info("%s: %s not stored; built with %d", path, NUM_CLASSES_KEY, num_classes)
    if num_classes is not None and not cfg.MODEL.HEADS.NUM_CLASSES:
        cfg.MODEL.HEADS.NUM_CLASSES = int(num_classes)
    build = cfg.clone()
    build.MODEL.CLIP.WEIGHTS, build.MODEL.CLIP.RANDOM_INIT = "", True  # replaced by the checkpoint
    model = trainer_cls.build_model(build)
    load_for_inference(model, path, key)
    cfg.freeze()
    return cfg, model.to(dev).eval(), cfg.MODEL.WEIGHTS


def _needs_classes(cfg: CfgNode, trainer_cls: type) -> bool:
    """Whether the model refuses ``MODEL.HEADS.NUM_CLASSES 0`` (sized modules need a count)."""
    probe = cfg.clone()
    probe.MODEL.CLIP.WEIGHTS, probe.MODEL.CLIP.RANDOM_INIT = "", True
    probe.MODEL.DEVICE = "cpu"
    try:
        trainer_cls.build_model(probe)
    except ValueError:
        return True
    return False
