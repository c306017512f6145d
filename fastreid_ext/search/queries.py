"""Where search queries come from: command-line text, a queries file, images, a dataset split.

Queries file format (UTF-8, one query per line): ``caption`` or ``pid<TAB>caption`` (the identity
the caption describes, so results get correct / wrong flags). Blank lines are skipped.

A dataset split (``--from-split``): the captions of a registered text-image dataset's ``test`` or
``val`` split with their identities, or the query images of a visible-infrared dataset (infrared
images of SYSU-MM01, the query modality of the chosen RegDB direction) -- the dataset, its root and
the split are those the index was built from when its metadata records them.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from fastreid.config import CfgNode
from fastreid.data.datasets import DATASET_REGISTRY

from ..data.vi.base import MODALITY_NAMES
from ..registry import lookup
from .records import Query

__all__ = [
    "MODALITIES",
    "QueryError",
    "image_queries",
    "pick_evenly",
    "read_queries_file",
    "split_queries",
    "text_queries",
]

logger = logging.getLogger(__name__)

#: Modalities of image queries (visible-infrared indexes).
MODALITIES = ("visible", "infrared")


class QueryError(ValueError):
    """Bad query input; the message names the file, line or argument."""


def text_queries(texts: Sequence[str], pid: Optional[int] = None) -> List[Query]:
    """One query per command-line caption (``pid``: the identity all of them describe)."""
    out = []
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise QueryError(f"query argument {i} is empty")
        out.append(Query(text=text.strip(), pid=pid, source=f"argument {i}"))
    return out


def image_queries(
    paths: Sequence[str], modality: Optional[str], pid: Optional[int] = None
) -> List[Query]:
    """One query per image file; ``modality`` is required (``visible`` or ``infrared``)."""
    if modality not in MODALITIES:
        raise QueryError(
            f"--modality must be one of {', '.join(MODALITIES)} for image queries, got {modality!r}"
        )
    out = []
    for i, path in enumerate(paths, 1):
        if not os.path.isfile(path):
            raise QueryError(f"query image {i} not found: {path}")
        out.append(
            Query(image=os.path.abspath(path), modality=modality, pid=pid, source=f"image {i}")
        )
    return out


def _parse_line(path: str, lineno: int, line: str) -> Optional[Query]:
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    pid: Optional[int] = None
    text = line
    if "\t" in line:
        head, text = line.split("\t", 1)
        try:
            pid = int(head.strip())
        except ValueError:
            raise QueryError(
                f"{path}:{lineno}: a line with a tab must be 'pid<TAB>caption' with an integer "
                f"pid, got {head.strip()!r}"
            ) from None
        if not text.strip():
            raise QueryError(f"{path}:{lineno}: the caption after the pid is empty")
    return Query(text=text.strip(), pid=pid, source=f"{os.path.basename(path)}:{lineno}")


def read_queries_file(path: str) -> List[Query]:
    """The queries of a queries file (see the module docstring for the format).

    Raises:
        QueryError: missing or non-UTF-8 file, a bad pid, or no query at all.
    """
    if not os.path.isfile(path):
        raise QueryError(f"queries file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise QueryError(f"{path}: not UTF-8 text ({e})") from e
    queries = [q for i, line in enumerate(lines, 1) if (q := _parse_line(path, i, line))]
    if not queries:
        raise QueryError(f"{path}: no query (the file is empty or holds only blank lines)")
    return queries


def pick_evenly(n: int, count: int) -> List[int]:
    """``count`` indices spread evenly over ``0..n-1`` (all of them when ``count`` is 0 or
    ``>= n``), so queries from a split cover many identities, not the first few."""
    if count <= 0 or count >= n:
        return list(range(n))
    return [i * n // count for i in range(count)]


def split_queries(
    cfg: CfgNode, source: Dict[str, Any], split: Optional[str] = None, count: int = 0
) -> List[Query]:
    """Queries with their identities from the dataset split an index was built from.

    Args:
        cfg: the predictor's config (visible-infrared datasets read their settings from it).
        source: the index's ``meta["source"]`` (``{"type": "dataset", "dataset", "split",
            "root"}``).
        split: ``"test"`` or ``"val"`` (text-image); default: the index's split.
        count: how many queries, spread evenly over the split (:func:`pick_evenly`); 0: all.

    Text-image datasets give the split's captions; visible-infrared datasets the test query
    images (SYSU-MM01: infrared; RegDB: the first direction's query modality).
    """
    if not isinstance(source, dict) or source.get("type") != "dataset":
        kind = source.get("type") if isinstance(source, dict) else None
        raise QueryError(
            f"--from-split: this index was built from a {kind or 'non-dataset'} source, not a "
            "dataset split, so there are no split queries; give queries as text or a file"
        )
    name, root = source["dataset"], source["root"]
    split = split or source.get("split", "test")
    if split != source.get("split"):
        logger.warning(
            "queries from split %r, gallery from split %r: identities need not overlap",
            split,
            source.get("split"),
        )
    cls = lookup(DATASET_REGISTRY, name, "dataset")
    where = f"{name}/{split}"
    if hasattr(cls, "evaluation_plan") and hasattr(cls, "from_config"):
        if split != "test":
            raise QueryError(f"--from-split {split}: {name} has query images in 'test' only")
        images = cls.from_config(cfg, root).query()
        picked = pick_evenly(len(images), count)
        return [
            Query(
                image=os.path.abspath(images[i].img_path),
                modality=MODALITY_NAMES[images[i].modality],
                pid=int(images[i].pid),
                source=f"{where} query {i}",
            )
            for i in picked
        ]
    try:
        data = cls(root=root).split(split)
    except ValueError as e:
        raise QueryError(f"--from-split {split}: {e}") from e
    picked = pick_evenly(data.num_captions, count)
    return [
        Query(text=data.captions[i], pid=int(data.caption_pids[i]), source=f"{where} caption {i}")
        for i in picked
    ]
