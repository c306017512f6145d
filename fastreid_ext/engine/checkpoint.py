"""Checkpoints: the training checkpointer (atomic saves, safe loads) and loading for evaluation.

Every checkpoint the trainer writes carries, next to ``"model"``, a ``"model_info"`` entry (plain
values, ``weights_only``-safe) with what rebuilding the model needs besides the config: the
config values set from the training data (``"data_config"``, e.g. ``MODEL.HEADS.NUM_CLASSES``,
which sizes the ID classifier, Propot's prototypes and CSDN's prompt learners and banks), the
meta-architecture and the run's config dump. :func:`resolve_num_classes` reads it, so evaluation
and inference need no training set; for older checkpoints it infers the count from the stored
tensor shapes (:func:`infer_num_classes`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.utils.checkpoint import Checkpointer
from torch import nn

from ..utils.atomic_io import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from ..version import __version__

__all__ = [
    "ExtCheckpointer",
    "MODEL_INFO_KEY",
    "NUM_CLASSES_KEY",
    "build_model_info",
    "infer_num_classes",
    "load_for_inference",
    "read_checkpoint",
    "read_model_info",
    "resolve_num_classes",
]

logger = logging.getLogger(__name__)

MODEL_INFO_KEY = "model_info"
#: The config key every data-sized module reads (classifier, prototypes, prompt learners, banks).
NUM_CLASSES_KEY = "MODEL.HEADS.NUM_CLASSES"


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


def build_model_info(cfg: CfgNode) -> Dict[str, Any]:
    """The ``"model_info"`` entry of a checkpoint trained with ``cfg`` (plain values only):
    ``{"format": 1, "meta_architecture", "data_config": {"MODEL.HEADS.NUM_CLASSES": n},
    "config": cfg.dump(), "fastreid_ext_version"}``."""
    return {
        "format": 1,
        "meta_architecture": str(cfg.MODEL.META_ARCHITECTURE),
        "data_config": {NUM_CLASSES_KEY: int(cfg.MODEL.HEADS.NUM_CLASSES)},
        "config": cfg.dump(),
        "fastreid_ext_version": __version__,
    }


def read_model_info(path: str) -> Optional[Dict[str, Any]]:
    """The ``"model_info"`` entry of checkpoint ``path`` (``None`` for older checkpoints and plain
    state dicts). Memory-mapped: the tensors are not read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise RuntimeError(
            f"Cannot load checkpoint '{path}' with weights_only=True: {exc}"
        ) from exc
    info = ckpt.get(MODEL_INFO_KEY) if isinstance(ckpt, dict) else None
    return info if isinstance(info, dict) else None


def _probe_shapes(cfg: CfgNode, build_model: Callable, n: int) -> Dict[str, Tuple[int, ...]]:
    probe = cfg.clone()
    probe.defrost()
    probe.MODEL.HEADS.NUM_CLASSES = n
    probe.MODEL.CLIP.WEIGHTS, probe.MODEL.CLIP.RANDOM_INIT = "", True  # shapes only
    probe.MODEL.DEVICE = "cpu"
    return {k: tuple(v.shape) for k, v in build_model(probe).state_dict().items()}


def infer_num_classes(
    cfg: CfgNode, build_model: Callable, state: Dict[str, torch.Tensor], path: str = ""
) -> Optional[int]:
    """Training-class count of a checkpoint without ``"model_info"``, from its tensor shapes.

    The model is built twice, with 1 and with 2 classes (random weights, CPU): a tensor whose
    shape differs between the two depends on the count, ``size = a * n + b`` along the dimension
    that differs. Each such tensor present in ``state`` gives ``n``. Returns ``None`` when the
    model does not depend on the count or ``state`` holds none of those tensors (then every count
    loads the same inference weights); raises ``ValueError`` naming the tensors when they
    disagree or no whole ``n >= 1`` fits.
    """
    one, two = _probe_shapes(cfg, build_model, 1), _probe_shapes(cfg, build_model, 2)
    found: Dict[str, int] = {}
    for key, s1 in one.items():
        s2 = two.get(key)
        if s2 is None or s2 == s1 or key not in state:
            continue
        stored = tuple(state[key].shape)
        dims = [d for d in range(len(s1)) if s1[d] != s2[d]]
        slope, offset = s2[dims[0]] - s1[dims[0]], 2 * s1[dims[0]] - s2[dims[0]]
        n, rest = divmod(stored[dims[0]] - offset, slope) if len(stored) == len(s1) else (0, 1)
        found[key] = n if rest == 0 and n >= 1 else -1
    if not found:
        return None
    counts = set(found.values())
    if len(counts) != 1 or -1 in counts:
        shown = ", ".join(f"{k} {tuple(state[k].shape)}" for k in list(found)[:6])
        raise ValueError(
            f"{NUM_CLASSES_KEY}: cannot infer the number of training classes of checkpoint "
            f"'{path}' from its tensors ({shown}); pass {NUM_CLASSES_KEY} N (the training "
            "identities) or use a checkpoint written by this version (it stores the count)"
        )
    return counts.pop()


def resolve_num_classes(
    cfg: CfgNode, build_model: Callable, path: str, key: str = "MODEL.WEIGHTS"
) -> Optional[int]:
    """The training-class count for rebuilding the model of checkpoint ``path``: the one in its
    ``"model_info"``, else inferred from its tensors (:func:`infer_num_classes`); ``None`` when
    the model's inference weights do not depend on it. An explicit ``MODEL.HEADS.NUM_CLASSES``
    in ``cfg`` that contradicts the stored count is an error naming both."""
    info = read_model_info(path)
    if info is not None and NUM_CLASSES_KEY in info.get("data_config", {}):
        stored = int(info["data_config"][NUM_CLASSES_KEY])
    else:
        stored = infer_num_classes(cfg, build_model, read_checkpoint(path, key), path)
    given = int(cfg.MODEL.HEADS.NUM_CLASSES)
    if given and stored is not None and stored and given != stored:
        raise ValueError(
            f"{NUM_CLASSES_KEY} is {given} in the config but checkpoint '{path}' was trained "
            f"with {stored} classes: remove the override or use the matching checkpoint"
        )
    return stored


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
    * ``model_info`` (see :func:`build_model_info`), when given, is saved with every checkpoint
      under ``"model_info"``: what rebuilding the model needs without the training set.
    """

    def __init__(
        self, *args: Any, model_info: Optional[Dict[str, Any]] = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._save_callbacks: List[Callable[[str], None]] = []
        self.model_info = model_info

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
        if self.model_info is not None:
            data[MODEL_INFO_KEY] = self.model_info
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
