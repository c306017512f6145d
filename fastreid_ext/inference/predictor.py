"""``Predictor``: a trained model of any method, loaded from ``config + weights``, that encodes
images and captions into the features its evaluator ranks with."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from fastreid.config import CfgNode
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.samplers import InferenceBatchSampler
from ..data.text_image import QueryCaptionSet, collate, read_image
from ..data.transforms import build_image_transforms
from ..data.vi.base import INFRARED, VISIBLE
from ..data.vi.transforms import build_vi_transforms
from ..engine.step import resolve_amp_dtype
from ..evaluation.features import IMAGE_KEY, TEXT_KEY, encode_batch
from ..model_zoo import SCHEME
from ..text.tokenizer import ClipTokenizer
from ..utils.progress import progress as progress_bar
from .loading import TEXT_IMAGE, VISIBLE_INFRARED, fingerprint, load_trained_model, task_of

__all__ = ["Predictor", "ImageInput", "MODALITIES", "TEXT_IMAGE", "VISIBLE_INFRARED"]

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, Image.Image]
#: ``modality=`` names of the visible-infrared methods and the flag their batches carry.
MODALITIES = {"visible": VISIBLE, "infrared": INFRARED}


class _ImageList(Dataset):
    """Items ``{"images": [3, H, W], "indices"}`` (+ ``"modality"``) of paths or PIL images,
    read as the evaluator's datasets read them (:func:`read_image`, the test transform)."""

    def __init__(self, images: Sequence[ImageInput], transform: Any, modality: Optional[int]):
        self.images, self.transform, self.modality = list(images), transform, modality

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        x = self.images[index]
        img = x.convert("RGB") if isinstance(x, Image.Image) else read_image(str(x))
        item: Dict[str, Any] = {"images": self.transform(img), "indices": index}
        if self.modality is not None:
            item["modality"] = self.modality
        return item


def _check_images(images: Any) -> List[ImageInput]:
    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError("images must be a sequence (a list of paths or PIL images) or a tensor")
    items = list(images)
    if not items:
        raise ValueError("images is empty: nothing to encode")
    for i, x in enumerate(items):
        if isinstance(x, Image.Image):
            continue
        if not isinstance(x, (str, Path)):
            raise TypeError(f"images[{i}] is a {type(x).__name__}: expected a path or PIL image")
        if not os.path.isfile(x):
            raise FileNotFoundError(f"images[{i}]: image file '{x}' does not exist")
    return items


def _config_path(config_file: str | Path) -> str:
    """A shipped config's name (``fastreid_ext://...``) stays a name; a path becomes absolute."""
    text = str(config_file)
    return text if text.startswith(SCHEME) else os.path.abspath(text)


class Predictor:
    """Encoder of one trained model (see :mod:`fastreid_ext.inference` for the contract).

    Attributes:
        cfg: the frozen config (``MODEL.WEIGHTS``, ``MODEL.DEVICE``, ``MODEL.HEADS.NUM_CLASSES``
            set).
        model: the meta-architecture in eval mode on :attr:`device`.
        task: ``"text-image"`` (Baseline, Propot, CPCL) or ``"visible-infrared"`` (CSDN).
        fingerprint: 16 hex digits identifying config + weights (:func:`loading.fingerprint`).
        device: where the model runs; ``amp_dtype``: CUDA autocast dtype or ``None``.
        config_file, weights: the absolute paths loaded; opts: the ``KEY VALUE`` overrides given.
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: nn.Module,
        config_file: str,
        weights: str,
        amp: Optional[bool] = None,
        opts: Sequence[str] = (),
    ) -> None:
        self.cfg, self.model = cfg, model
        self.config_file, self.weights = config_file, weights
        self.opts = [str(x) for x in opts]
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.task = task_of(cfg)
        self.method = str(cfg.MODEL.META_ARCHITECTURE)
        use_amp = self.device.type == "cuda" if amp is None else bool(amp)
        if use_amp and self.device.type != "cuda":
            logger.warning("amp=True is ignored on %s: AMP runs on CUDA only", self.device)
        self.amp_dtype = resolve_amp_dtype(use_amp, cfg.SOLVER.AMP.DTYPE, self.device)
        self.fingerprint = fingerprint(cfg, weights)
        if self.task == TEXT_IMAGE:
            self.image_transform = build_image_transforms(cfg, is_train=False)
        else:
            self.image_transform = build_vi_transforms(cfg, is_train=False)
        self.tokenizer = ClipTokenizer(cfg.MODEL.CLIP.CONTEXT_LENGTH)

    @classmethod
    def from_config(
        cls,
        config_file: str | Path,
        weights: str | Path | None = None,
        opts: Sequence[str] = (),
        device: str = "auto",
        amp: Optional[bool] = None,
    ) -> Predictor:
        """Load the model of ``config_file`` (a path or ``fastreid_ext://<folder>/<file>.yml``)
        with the trained checkpoint ``weights`` (default: ``MODEL.WEIGHTS`` of the config or
        ``opts``); no dataset is read. ``device``: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``;
        ``amp``: CUDA autocast (``SOLVER.AMP.DTYPE``), default on for CUDA, off on CPU."""
        cfg, model, path = load_trained_model(config_file, weights, opts, device)
        logger.info(
            "Loaded %s (%s) from %s on %s",
            cfg.MODEL.META_ARCHITECTURE,
            task_of(cfg),
            path,
            cfg.MODEL.DEVICE,
        )
        return cls(cfg, model, _config_path(config_file), path, amp, opts)

    # ------------------------------------------------------------------ encoding
    def _modality(self, modality: Optional[str]) -> Optional[int]:
        if self.task == TEXT_IMAGE:
            if modality is not None:
                raise ValueError(
                    f"modality={modality!r}: {self.method} is a text-image method; modality is "
                    "for visible-infrared methods (CSDN) only"
                )
            return None
        if modality not in MODALITIES:
            raise ValueError(
                f"{self.method} is a visible-infrared method: pass modality='visible' or "
                f"'infrared' (got {modality!r})"
            )
        return MODALITIES[modality]

    def _loader(self, dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=InferenceBatchSampler(len(dataset), batch_size),
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )

    def _run(self, batches: Any, key: str, desc: str, total: int, show: bool) -> torch.Tensor:
        feats = [
            encode_batch(self.model, batch, key, self.amp_dtype)
            for batch in progress_bar(batches, desc, total=total, enabled=show)
        ]
        return torch.cat(feats)

    def encode_images(
        self,
        images: Union[Sequence[ImageInput], torch.Tensor],
        modality: Optional[str] = None,
        batch_size: int = 64,
        progress: bool = True,
        num_workers: Optional[int] = None,
    ) -> torch.Tensor:
        """``[N, D]`` float32 CPU features, L2-normalised, of ``images`` in order.

        ``images``: paths or PIL images (read and transformed as the evaluator does), or a
        tensor ``[N, 3, H, W]`` already transformed (pixel values in [0, 255], the test size).
        ``modality``: ``"visible"`` or ``"infrared"``, required by visible-infrared methods and
        refused by text-image ones. ``num_workers``: loader processes (default
        ``DATALOADER.NUM_WORKERS``).
        """
        flag = self._modality(modality)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        desc = "Encoding images" + (f" ({modality})" if modality else "")
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
                raise ValueError(f"an image tensor must be [N, 3, H, W], got {tuple(images.shape)}")
            batches = (self._tensor_batch(x, flag) for x in images.split(batch_size))
            total = (images.shape[0] + batch_size - 1) // batch_size
            return self._run(batches, IMAGE_KEY, desc, total, progress)
        items = _check_images(images)
        workers = self.cfg.DATALOADER.NUM_WORKERS if num_workers is None else int(num_workers)
        loader = self._loader(_ImageList(items, self.image_transform, flag), batch_size, workers)
        return self._run(loader, IMAGE_KEY, desc, len(loader), progress)

    @staticmethod
    def _tensor_batch(images: torch.Tensor, flag: Optional[int]) -> Dict[str, torch.Tensor]:
        batch = {"images": images}
        if flag is not None:
            batch["modality"] = torch.full((images.shape[0],), flag, dtype=torch.long)
        return batch

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, progress: bool = True
    ) -> torch.Tensor:
        """``[N, D]`` float32 CPU features, L2-normalised, of the captions ``texts`` (tokenised
        as the evaluator does); text-image methods only."""
        if self.task != TEXT_IMAGE:
            raise ValueError(
                f"{self.method} is a {self.task} method: it encodes images only (no text encoder "
                "at inference); encode_texts is for text-image methods (Baseline, Propot, CPCL)"
            )
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string: pass [text]")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: nothing to encode")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        captions = QueryCaptionSet(texts, [-1] * len(texts), self.tokenizer)
        loader = self._loader(captions, batch_size, 0)
        return self._run(loader, TEXT_KEY, "Encoding texts", len(loader), progress)

    def __repr__(self) -> str:
        return (
            f"Predictor({self.method}, task={self.task}, device={self.device}, "
            f"fingerprint={self.fingerprint}, weights={self.weights})"
        )
