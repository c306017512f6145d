"""``GalleryIndex``: a faiss index of gallery features plus what each row is, saved as a folder.

Folder layout (every file written atomically: temporary file, fsync, rename):

* ``index.faiss``: the faiss index (``faiss.write_index``); it holds the features themselves.
* ``rows.json``: ``{"index_id", "paths", "roots", "pids", "camids", "modality"}`` (row order).
* ``meta.json``: :attr:`GalleryIndex.meta` -- written last, with the size and sha256 of the two
  files above and the shared ``index_id``. :meth:`GalleryIndex.load` refuses a folder whose
  files disagree with it (a save interrupted half-way, files of two saves mixed, a truncated or
  edited file), naming the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from typing import Any, Dict, Optional, Sequence, Tuple

import faiss
import numpy as np
import torch

from ..utils.atomic_io import atomic_json_dump, atomic_open
from .faiss_index import KINDS, apply_search_params, as_features, kind_of, search_parameters

__all__ = ["GalleryIndex", "IndexFolderError", "INDEX_FILE", "ROWS_FILE", "META_FILE"]

INDEX_FILE, ROWS_FILE, META_FILE = "index.faiss", "rows.json", "meta.json"
FORMAT = 1


class IndexFolderError(ValueError):
    """A gallery-index folder is incomplete or its files disagree; the message names the file."""


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _optional_list(
    values: Optional[Sequence[Any]], n: int, name: str, cast: type
) -> Optional[list]:
    if values is None:
        return None
    out = [cast(v) for v in values]
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries for {n} rows")
    return out


class GalleryIndex:
    """Search a gallery by inner product of L2-normalised features.

    Attributes:
        index: the faiss index (``flat``, ``ivf`` or ``hnsw``).
        paths: absolute image path per row ``[N]``.
        roots: absolute folders the images were taken from.
        pids, camids: identity / camera per row, or ``None``.
        modality: ``"visible"`` / ``"infrared"`` per row, or ``None``.
        meta: config file, weights, fingerprint, method, task, kind, dim, ntotal, params, source,
            created, versions, ... (JSON-serialisable).
    """

    def __init__(
        self,
        index: faiss.Index,
        paths: Sequence[str],
        roots: Sequence[str],
        meta: Dict[str, Any],
        pids: Optional[Sequence[int]] = None,
        camids: Optional[Sequence[int]] = None,
        modality: Optional[Sequence[str]] = None,
    ) -> None:
        n = int(index.ntotal)
        self.index = index
        self.paths = [str(p) for p in paths]
        if len(self.paths) != n:
            raise ValueError(f"{len(self.paths)} paths for an index of {n} vectors")
        self.roots = [str(r) for r in roots]
        self.pids = _optional_list(pids, n, "pids", int)
        self.camids = _optional_list(camids, n, "camids", int)
        self.modality = _optional_list(modality, n, "modality", str)
        self.meta = dict(meta)
        self.meta.update(kind=kind_of(index), dim=int(index.d), ntotal=n, metric="inner_product")
        self.meta.setdefault("index_id", uuid.uuid4().hex)
        self.meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat())
        self.meta.setdefault("params", {})
        apply_search_params(index, self.meta["params"])

    # ------------------------------------------------------------------ access
    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(
        self,
        queries: Any,
        k: int,
        nprobe: Optional[int] = None,
        ef_search: Optional[int] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` rows of every query of ``queries`` ``[Q, D]`` (tensor or array, normalised
        as the Predictor's features are): ``(scores [Q, k'] float32, ids [Q, k'] int64)``,
        ``k' = min(k, N)``, best first. An approximate index that finds fewer than ``k'`` rows
        for a query fills the rest with id -1. ``nprobe`` / ``ef_search`` override the stored
        search parameters for this call."""
        q = as_features(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(int(k), len(self))
        params = search_parameters(self.kind, nprobe, ef_search)
        scores, ids = self.index.search(q, k, params=params)
        return torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64, copy=False))

    def features(self, ids: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Stored features ``[len(ids), D]`` (all rows when ``ids`` is ``None``)."""
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()
        if ids is None:
            return torch.from_numpy(self.index.reconstruct_n(0, len(self)))
        rows = np.asarray(list(ids), dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row ids must be in 0..{len(self) - 1}")
        return torch.from_numpy(self.index.reconstruct_batch(rows))

    # ------------------------------------------------------------------ files
    def save(self, folder: str) -> None:
        """Write ``index.faiss``, ``rows.json`` and, last, ``meta.json`` into ``folder``."""
        os.makedirs(folder, exist_ok=True)
        index_id = uuid.uuid4().hex
        files = {INDEX_FILE: self._write_faiss(os.path.join(folder, INDEX_FILE))}
        rows = {
            "format": FORMAT,
            "index_id": index_id,
            "paths": self.paths,
            "roots": self.roots,
            "pids": self.pids,
            "camids": self.camids,
            "modality": self.modality,
        }
        text = json.dumps(rows)
        with atomic_open(os.path.join(folder, ROWS_FILE), "w", encoding="utf-8") as f:
            f.write(text)
        data = text.encode("utf-8")
        files[ROWS_FILE] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.meta.update(format=FORMAT, index_id=index_id, files=files)
        atomic_json_dump(self.meta, os.path.join(folder, META_FILE))

    def _write_faiss(self, path: str) -> Dict[str, Any]:
        digest, size = hashlib.sha256(), 0
        with atomic_open(path, "wb") as f:

            def write(chunk: bytes) -> int:
                nonlocal size
                digest.update(chunk)
                size += len(chunk)
                return f.write(chunk)

            faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))
        return {"size": size, "sha256": digest.hexdigest()}

    @classmethod
    def load(cls, folder: str, verify: bool = True) -> GalleryIndex:
        """Read a folder written by :meth:`save`. ``verify`` checks every file's sha256 against
        ``meta.json`` (sizes, row counts, dimension and ``index_id`` are always checked).

        Raises:
            IndexFolderError: a file is missing, unreadable or disagrees with ``meta.json``.
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.isdir(folder):
            raise IndexFolderError(f"gallery index folder '{folder}' does not exist")
        meta = _read_json(meta_path)
        files = meta.get("files")
        if meta.get("format") != FORMAT or not isinstance(files, dict):
            raise IndexFolderError(f"{meta_path}: not a gallery index meta file (format {FORMAT})")
        for name in (INDEX_FILE, ROWS_FILE):
            _check_file(folder, name, files.get(name), verify)
        rows = _read_json(os.path.join(folder, ROWS_FILE))
        if rows.get("index_id") != meta.get("index_id"):
            raise IndexFolderError(
                f"{os.path.join(folder, ROWS_FILE)}: index_id {rows.get('index_id')} differs from "
                f"{META_FILE}'s {meta.get('index_id')} (files of two saves)"
            )
        index_path = os.path.join(folder, INDEX_FILE)
        try:
            index = faiss.read_index(index_path)
        except RuntimeError as exc:
            raise IndexFolderError(f"{index_path}: cannot be read by faiss: {exc}") from exc
        expected = (meta.get("ntotal"), meta.get("dim"), meta.get("kind"))
        found = (int(index.ntotal), int(index.d), kind_of(index))
        if expected != found or len(rows.get("paths", [])) != index.ntotal:
            raise IndexFolderError(
                f"{index_path}: (rows, dim, kind) {found} but {META_FILE} says {expected} and "
                f"{ROWS_FILE} lists {len(rows.get('paths', []))} paths"
            )
        if meta["kind"] not in KINDS:
            raise IndexFolderError(f"{meta_path}: unknown kind {meta['kind']!r}")
        try:
            return cls(
                index,
                rows["paths"],
                rows.get("roots", []),
                meta,
                rows.get("pids"),
                rows.get("camids"),
                rows.get("modality"),
            )
        except (ValueError, TypeError) as exc:
            raise IndexFolderError(f"{os.path.join(folder, ROWS_FILE)}: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"GalleryIndex(kind={self.kind}, rows={len(self)}, dim={self.dim}, "
            f"fingerprint={self.meta.get('fingerprint')})"
        )


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise IndexFolderError(f"gallery index file '{path}' is missing")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise IndexFolderError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise IndexFolderError(f"{path}: expected a JSON object")
    return data


def _check_file(folder: str, name: str, record: Any, verify: bool) -> None:
    path = os.path.join(folder, name)
    if not isinstance(record, dict) or "size" not in record or "sha256" not in record:
        raise IndexFolderError(f"{os.path.join(folder, META_FILE)} has no record of {name}")
    if not os.path.isfile(path):
        raise IndexFolderError(f"gallery index file '{path}' is missing")
    size = os.path.getsize(path)
    if size != record["size"]:
        raise IndexFolderError(
            f"{path}: {size} bytes but {META_FILE} records {record['size']} (interrupted save, "
            "or files of two saves mixed): rebuild the index"
        )
    if verify and _sha256_file(path) != record["sha256"]:
        raise IndexFolderError(
            f"{path}: content differs from {META_FILE}'s sha256 (files of two saves mixed, or "
            "the file was modified): rebuild the index"
        )
