"""Checkpoints: the training checkpointer (atomic saves, safe loads) and loading for evaluation."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Tuple

import torch
from fastreid.utils.checkpoint import Checkpointer
from torch import nn

from ..utils.atomic_io import atomic_torch_save, atomic_write_text, remove_stale_temporaries

__all__ = ["ExtCheckpointer", "load_for_inference", "read_checkpoint"]

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


class ExtCheckpointer(Checkpointer):
    """fast-reid's ``Checkpointer`` whose files a later run can always trust.

    * :meth:`save` writes ``<name>.pth`` to a temporary file, flushes and renames it, and only then
      re-points ``last_checkpoint`` (also written atomically): a process killed mid-save leaves the
      previous checkpoint and the previous pointer intact, never a truncated file behind the
      pointer. :meth:`remove_stale_temporaries` deletes what such a kill leaves behind.
    * Loads use ``torch.load(weights_only=True)`` and name the file on failure.
    * A training-init ``MODEL.WEIGHTS`` may be a plain state dict (``{name: tensor}``) instead of a
      checkpoint with a ``"model"`` entry.
    * Callbacks registered with :meth:`add_save_callback` run after every completed save (e.g. to
      delete caches that the new checkpoint makes obsolete).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._save_callbacks: List[Callable[[str], None]] = []

    def add_save_callback(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(path)`` after each checkpoint has been written completely."""
        self._save_callbacks.append(fn)

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)
        for fn in self._save_callbacks:
            fn(path)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names; an error if it names a file that is gone."""
        path = super().get_checkpoint_file()
        if path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"{os.path.join(self.save_dir, 'last_checkpoint')} names '{path}', which does not "
                "exist: restore that file or delete 'last_checkpoint' to start from scratch"
            )
        return path

    def remove_stale_temporaries(self) -> List[str]:
        """Delete temporary files of interrupted saves in ``save_dir`` (main process, at start)."""
        if not self.save_to_disk:
            return []
        return remove_stale_temporaries(self.save_dir)

    def _load_file(self, f: str) -> Dict[str, Any]:
        try:
            ckpt = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except Exception as exc:  # re-raised with the file name
            raise RuntimeError(
                f"Cannot load checkpoint '{f}' with weights_only=True: {exc}. fastreid_ext "
                "checkpoints hold only tensors and plain Python values; is this file a checkpoint "
                "written by fast-reid / fastreid_ext?"
            ) from exc
        if not isinstance(ckpt, dict):
            raise ValueError(f"Checkpoint '{f}' holds a {type(ckpt).__name__}, not a dict")
        if "model" not in ckpt:
            if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
                self.logger.info("'%s' is a plain state dict: loading it as the model weights", f)
                return {"model": ckpt}
            raise KeyError(
                f"Checkpoint '{f}' has no 'model' entry and is not a plain state dict "
                f"(top-level keys: {sorted(map(str, ckpt))[:10]})"
            )
        return ckpt
