"""Loading a trained checkpoint for evaluation, with clear errors for wrong files."""

from __future__ import annotations

import logging
import os
from typing import Dict, Tuple

import torch
from torch import nn

__all__ = ["load_for_inference", "read_checkpoint"]

logger = logging.getLogger(__name__)


def read_checkpoint(path: str, key: str = "MODEL.WEIGHTS") -> Dict[str, torch.Tensor]:
    """The model state dict stored in ``path`` (``weights_only=True``; ``module.`` stripped)."""
    if not path:
        raise ValueError(
            f"{key} is empty: pass the checkpoint to evaluate, e.g. {key} output/model_final.pth"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: checkpoint file '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{key}: cannot load '{path}' with weights_only=True: {exc}") from exc
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{key}: '{path}' does not hold a model state dict ('model' entry)")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _split(model: nn.Module, keys) -> Tuple[list, list]:
    prefixes = tuple(getattr(model, "training_only_prefixes", ()))
    needed = [k for k in keys if not k.startswith(prefixes)]
    optional = [k for k in keys if k.startswith(prefixes)]
    return needed, optional


def load_for_inference(model: nn.Module, path: str, key: str = "MODEL.WEIGHTS") -> None:
    """Load ``path`` into ``model`` for evaluation.

    Every parameter and buffer used at inference must be present with the right shape; modules
    listed in ``model.training_only_prefixes`` (classifier, MLM head, prototypes, ...) may be
    missing or differ. Anything else raises an error naming the checkpoint and the keys.
    """
    state = read_checkpoint(path, key)
    own = model.state_dict()
    missing, _ = _split(model, [k for k in own if k not in state])
    unexpected, _ = _split(model, [k for k in state if k not in own])
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    bad_shape, _ = _split(model, mismatched)
    if missing or unexpected or bad_shape:

        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} total)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if bad_shape:
            parts.append(
                "shape mismatch: "
                + show([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape])
            )
        raise ValueError(
            f"{key}: checkpoint '{path}' does not match the model "
            f"{type(model).__name__} ({'; '.join(parts)}). Was it trained with this config?"
        )
    loadable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    model.load_state_dict(loadable, strict=False)
    logger.info("Loaded %d tensors from %s", len(loadable), path)
