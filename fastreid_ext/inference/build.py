"""``build_gallery_index``: encode a gallery with a :class:`Predictor` and index it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import faiss
import torch

from ..version import __version__
from .faiss_index import build_faiss_index
from .index import GalleryIndex
from .loading import VISIBLE_INFRARED
from .predictor import Predictor
from .sources import ImageSource, dataset_source, folder_source, paths_source

__all__ = ["build_gallery_index", "encode_source", "resolve_source"]

logger = logging.getLogger(__name__)

SourceLike = Union[ImageSource, str, Path, Sequence[str], None]


def resolve_source(
    predictor: Predictor,
    source: SourceLike = None,
    dataset: Optional[str] = None,
    split: str = "test",
    root: Optional[str] = None,
) -> ImageSource:
    """An :class:`ImageSource` from a folder (``str`` / ``Path``), a list of image paths, an
    :class:`ImageSource`, or ``dataset=NAME, split=...`` (under ``root`` or ``DATASETS.ROOT``)."""
    if (source is None) == (dataset is None):
        raise ValueError("pass exactly one of source (a folder, paths) and dataset=NAME")
    if dataset is not None:
        return dataset_source(predictor.cfg, dataset, split, root)
    if isinstance(source, ImageSource):
        return source
    if isinstance(source, (str, Path)):
        return folder_source(str(source))
    return paths_source(list(source))


def encode_source(
    predictor: Predictor,
    source: ImageSource,
    modality: Optional[str] = None,
    batch_size: int = 64,
    progress: bool = True,
    num_workers: Optional[int] = None,
) -> torch.Tensor:
    """``[N, D]`` features of the source's images in row order. Rows with a recorded modality
    (visible-infrared dataset splits) are encoded with it; otherwise ``modality`` applies."""
    kw: Dict[str, Any] = dict(batch_size=batch_size, progress=progress, num_workers=num_workers)
    if source.modality is None or predictor.task != VISIBLE_INFRARED:
        return predictor.encode_images(source.paths, modality=modality, **kw)
    if modality is not None:
        raise ValueError(
            f"modality={modality!r} given, but the source records each image's modality"
        )
    rows = {m: [i for i, x in enumerate(source.modality) if x == m] for m in set(source.modality)}
    out: Optional[torch.Tensor] = None
    for m in sorted(rows):
        feats = predictor.encode_images([source.paths[i] for i in rows[m]], modality=m, **kw)
        if out is None:
            out = feats.new_empty(len(source), feats.shape[1])
        out[torch.as_tensor(rows[m])] = feats
    assert out is not None
    return out


def build_gallery_index(
    predictor: Predictor,
    source: SourceLike = None,
    *,
    dataset: Optional[str] = None,
    split: str = "test",
    root: Optional[str] = None,
    kind: str = "flat",
    modality: Optional[str] = None,
    batch_size: int = 64,
    progress: bool = True,
    num_workers: Optional[int] = None,
    **index_params: Any,
) -> GalleryIndex:
    """Encode a gallery with ``predictor`` and index it.

    Args:
        source: a folder (searched recursively), a list of image paths or an
            :class:`~fastreid_ext.inference.sources.ImageSource`; or instead
        dataset, split, root: a split (``train``/``val``/``test``) of a registered dataset.
        kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``; ``index_params``: ``nlist``,
            ``nprobe``, ``train_size``, ``hnsw_m``, ``ef_construction``, ``ef_search``, ``seed``
            (:func:`~fastreid_ext.inference.faiss_index.build_faiss_index`).
        modality: ``"visible"`` / ``"infrared"`` for a visible-infrared model on a folder or list.
        batch_size, num_workers, progress: encoding batches, loader processes, progress bars.
    """
    src = resolve_source(predictor, source, dataset, split, root)
    start = time.perf_counter()
    feats = encode_source(predictor, src, modality, batch_size, progress, num_workers)
    encode_seconds = time.perf_counter() - start
    index, params = build_faiss_index(feats.numpy(), kind, show_progress=progress, **index_params)
    meta = {
        "config_file": predictor.config_file,
        "weights": predictor.weights,
        "opts": predictor.opts,
        "fingerprint": predictor.fingerprint,
        "method": predictor.method,
        "task": predictor.task,
        "source": src.description,
        "modality": modality,
        "params": params,
        "device": str(predictor.device),
        "amp": str(predictor.amp_dtype).replace("torch.", "") if predictor.amp_dtype else None,
        "batch_size": batch_size,
        "encode_seconds": round(encode_seconds, 3),
        "images_per_second": round(len(src) / max(encode_seconds, 1e-9), 2),
        "versions": {"fastreid_ext": __version__, "faiss": faiss.__version__},
    }
    logger.info(
        "Indexed %d images (%s, dim %d): encoding %.1f s, index %.1f s",
        len(src),
        kind,
        feats.shape[1],
        encode_seconds,
        params["build_seconds"],
    )
    return GalleryIndex(index, src.paths, src.roots, meta, src.pids, src.camids, src.modality)
