"""Run searches: a predictor encodes the queries, the gallery index returns the top-k.

:meth:`Searcher.open` loads a gallery index folder (written by ``tools/extract_features.py``) and
the model it was built with: the config file and weights default to what the index's metadata
records, and a predictor whose fingerprint differs from the index's is refused
(:class:`FingerprintMismatchError`) unless ``allow_mismatch`` -- features of two different models
are not comparable, so the ranking would be meaningless.

Scores are cosine similarities: query features ``[Q, D]`` and gallery features ``[N, D]`` are
both L2-normalised, and the index returns the ``k`` largest of ``q @ g.T`` per query.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Set

import torch
from PIL import Image

from ..inference import GalleryIndex, Predictor
from .records import Hit, Query, SearchResult

__all__ = [
    "FingerprintMismatchError",
    "SearchError",
    "Searcher",
    "TASK_QUERY_KIND",
    "check_fingerprint",
]

logger = logging.getLogger(__name__)

#: Which query kind each task takes: captions for text-image, images for visible-infrared.
TASK_QUERY_KIND = {"text-image": "text", "visible-infrared": "image"}


class SearchError(ValueError):
    """A search that cannot run as asked (wrong query kind for the index, bad k)."""


class FingerprintMismatchError(SearchError):
    """The predictor is not the model the gallery index was built with."""


def _meta_get(meta: Dict[str, Any], *keys: str) -> Optional[Any]:
    for key in keys:
        if meta.get(key) not in (None, ""):
            return meta[key]
    return None


class Searcher:
    """A predictor and the gallery index it searches.

    Args:
        predictor: a :class:`fastreid_ext.inference.Predictor`.
        index: a :class:`fastreid_ext.inference.GalleryIndex` built with the same model.
        index_dir: the index folder (reported in outputs; never served by the web page).
        same_modality: let image queries also retrieve gallery rows of their own modality
            (default: cross-modal only, when the index records each row's modality).
    """

    def __init__(
        self,
        predictor: Predictor,
        index: GalleryIndex,
        index_dir: str = "",
        same_modality: bool = False,
    ) -> None:
        self.predictor = predictor
        self.same_modality = same_modality
        self.index = index
        self.index_dir = os.path.abspath(index_dir) if index_dir else ""
        self.task: str = predictor.task
        if self.task not in TASK_QUERY_KIND:
            raise SearchError(f"unknown predictor task {self.task!r}")
        self._lock = threading.Lock()  # one encoding at a time (the web server is threaded)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(
        cls,
        index_dir: str,
        config_file: Optional[str] = None,
        weights: Optional[str] = None,
        device: str = "auto",
        allow_mismatch: bool = False,
        opts: Optional[Sequence[str]] = None,
        same_modality: bool = False,
    ) -> Searcher:
        """Load the index in ``index_dir`` and the predictor: ``config_file``, ``weights`` and
        ``opts`` (``KEY VALUE`` config overrides) default to what the index's metadata records
        (``opts`` only where the index records them, ``meta["opts"]``).

        Raises:
            IndexFolderError: no complete index in ``index_dir`` (the message names the file).
            FileNotFoundError: the config or weights file does not exist.
            SearchError: the index records no config file and none is given.
            FingerprintMismatchError: the predictor's fingerprint is not the index's (unless
                ``allow_mismatch``; then a warning is logged).
        """
        index = GalleryIndex.load(index_dir)
        meta = index.meta
        config_file = config_file or _meta_get(meta, "config_file", "config")
        if not config_file:
            raise SearchError(
                f"{index_dir}: the index metadata records no config file; pass --config-file"
            )
        weights = weights or _meta_get(meta, "weights")
        if opts is None:
            opts = [str(x) for x in meta.get("opts") or []]
        predictor = Predictor.from_config(
            config_file, weights=weights, opts=list(opts), device=device
        )
        check_fingerprint(predictor, index, index_dir, allow_mismatch)
        return cls(predictor, index, index_dir, same_modality)

    # ------------------------------------------------------------------ searching
    @property
    def query_kind(self) -> str:
        """``"text"`` (text-image index) or ``"image"`` (visible-infrared index)."""
        return TASK_QUERY_KIND[self.task]

    @property
    def gallery_size(self) -> int:
        """Number of gallery images N."""
        return len(self.index.paths)

    def check_queries(self, queries: Sequence[Query]) -> None:
        """Raise :class:`SearchError` unless every query is of the index's kind."""
        if not queries:
            raise SearchError("no query given")
        for q in queries:
            if (q.is_text and self.query_kind != "text") or (
                not q.is_text and self.query_kind != "image"
            ):
                kind = "a caption" if q.is_text else "an image"
                want = "captions" if self.query_kind == "text" else "query images (--query-image)"
                raise SearchError(
                    f"query {q.source!r} is {kind}, but this {self.task} index takes {want}"
                )

    def encode(self, queries: Sequence[Query], progress: bool = False) -> torch.Tensor:
        """Features of ``queries`` in order, ``[Q, D]`` float32, L2-normalised."""
        self.check_queries(queries)
        with self._lock:
            if self.query_kind == "text":
                return self.predictor.encode_texts([q.text for q in queries], progress=progress)
            feats: List[Optional[torch.Tensor]] = [None] * len(queries)
            for modality in sorted({q.modality for q in queries}):
                rows = [i for i, q in enumerate(queries) if q.modality == modality]
                out = self.predictor.encode_images(
                    [queries[i].image for i in rows], modality=modality, progress=progress
                )
                for j, i in enumerate(rows):
                    feats[i] = out[j]
            return torch.stack(feats)  # type: ignore[arg-type]

    def encode_image(self, image: Image.Image, modality: str) -> torch.Tensor:
        """Features of one in-memory query image, ``[1, D]``."""
        if self.query_kind != "image":
            raise SearchError(f"this {self.task} index takes captions, not query images")
        with self._lock:
            return self.predictor.encode_images([image], modality=modality, progress=False)

    def _rows_excluded(self, query: Query) -> Optional[Set[int]]:
        """Gallery rows a query must not retrieve: for an image query on a visible-infrared index
        that records each row's modality, the rows of the query's own modality (the search is
        cross-modal, e.g. infrared query -> visible gallery), unless ``same_modality``."""
        modality = self.index.modality
        if query.is_text or modality is None or self.same_modality:
            return None
        return {i for i, m in enumerate(modality) if m == query.modality}

    def rank(self, queries: Sequence[Query], feats: torch.Tensor, k: int) -> List[SearchResult]:
        """Top-``k`` hits of each query from its features ``feats [Q, D]``.

        ``k`` larger than the gallery (the rows a query may retrieve) is reduced to its size.
        """
        if k < 1:
            raise SearchError(f"top-k must be at least 1, got {k}")
        if feats.shape[0] != len(queries):
            raise SearchError(f"{len(queries)} queries but {feats.shape[0]} feature rows")
        pids = self.index.pids
        results = []
        for qi, q in enumerate(queries):
            excluded = self._rows_excluded(q) or set()
            # over-fetch by the excluded rows so that k allowed rows remain after filtering
            fetch = min(self.gallery_size, k + len(excluded))
            scores, ids = self.index.search(feats[qi : qi + 1], fetch)
            hits: List[Hit] = []
            for score, g in zip(scores[0].tolist(), ids[0].tolist()):
                if g < 0 or g in excluded:
                    continue
                pid = None if pids is None else int(pids[g])
                correct = None if pid is None or q.pid is None else pid == q.pid
                hits.append(Hit(len(hits) + 1, float(score), g, self.index.paths[g], pid, correct))
                if len(hits) == k:
                    break
            results.append(SearchResult(q, hits))
        return results

    def search(
        self, queries: Sequence[Query], k: int, progress: bool = False
    ) -> List[SearchResult]:
        """Encode ``queries`` and return their top-``k`` results."""
        return self.rank(queries, self.encode(queries, progress=progress), k)

    def info(self) -> Dict[str, Any]:
        """What identifies this search: index folder, task, config, weights, fingerprints."""
        meta = self.index.meta
        return {
            "index": self.index_dir,
            "task": self.task,
            "gallery_size": self.gallery_size,
            "config_file": _meta_get(meta, "config_file", "config"),
            "weights": _meta_get(meta, "weights"),
            "index_fingerprint": meta.get("fingerprint"),
            "model_fingerprint": self.predictor.fingerprint,
        }


def check_fingerprint(
    predictor: Predictor, index: GalleryIndex, index_dir: str, allow_mismatch: bool = False
) -> None:
    """Refuse a predictor that is not the model the index was built with.

    Raises:
        FingerprintMismatchError: the fingerprints differ and ``allow_mismatch`` is False.
    """
    recorded = index.meta.get("fingerprint")
    if recorded is not None and recorded == predictor.fingerprint:
        return
    what = (
        "records no model fingerprint"
        if recorded is None
        else f"was built with model fingerprint {recorded}"
    )
    message = (
        f"gallery index {index_dir} {what} (config {index.meta.get('config_file')}, weights "
        f"{index.meta.get('weights')}); the model loaded now has fingerprint "
        f"{predictor.fingerprint}. Features of different models are not comparable: pass the "
        "index's --config-file/--weights/--opts, rebuild the index, or --allow-mismatch to "
        "search anyway"
    )
    if not allow_mismatch:
        raise FingerprintMismatchError(message)
    logger.warning("--allow-mismatch: %s", message)
