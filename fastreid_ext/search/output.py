"""Search results as a printed table, a JSON file and retrieval-grid images.

JSON layout (``results_to_json``)::

    {"index": DIR, "task": ..., "config_file": ..., "weights": ..., "fingerprint": ..., "topk": k,
     "results": [{"query": {"text", "image", "modality", "pid", "source"},
                  "hits": [{"rank", "score", "gallery_index", "path", "pid", "correct"}, ...]},
                 ...]}

Grids are drawn by :func:`fastreid_ext.visualization.draw_retrieval_grid` (query above / left, the
top-k with rank and score, green / red borders when the query's identity is known).
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any, Dict, List, Sequence

from PIL import Image
from tabulate import tabulate

from ..utils.atomic_io import atomic_json_dump, atomic_write_bytes
from ..visualization import draw_retrieval_grid
from .records import SearchResult

__all__ = ["draw_result", "format_table", "results_to_json", "save_grid", "save_grids", "stack"]


def format_table(result: SearchResult) -> str:
    """The query line and a table of its hits: rank, score, pid (when known), correct (when
    known), path."""
    q = result.query
    head = f"query [{q.source}]" + (f" (pid {q.pid})" if q.pid is not None else "")
    head += f": {q.label}"
    with_pid = any(h.pid is not None for h in result.hits)
    with_truth = result.has_ground_truth
    rows = []
    for h in result.hits:
        row: List[Any] = [h.rank, f"{h.score:.4f}"]
        if with_pid:
            row.append(h.pid)
        if with_truth:
            row.append("yes" if h.correct else "no")
        rows.append(row + [h.path])
    headers = ["rank", "score"] + (["pid"] if with_pid else [])
    headers += (["correct"] if with_truth else []) + ["path"]
    return head + "\n" + tabulate(rows, headers=headers, disable_numparse=True)


def results_to_json(
    results: Sequence[SearchResult], info: Dict[str, Any], path: str
) -> Dict[str, Any]:
    """Write ``{**info, "results": [...]}`` to ``path`` atomically; returns the document."""
    doc = dict(info)
    doc["results"] = [r.to_dict() for r in results]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic_json_dump(doc, path, indent=2)
    return doc


def draw_result(result: SearchResult, cell_size=(128, 64)) -> Image.Image:
    """The retrieval grid of one result (title: the query's source and pid)."""
    q = result.query
    query = q.text if q.text is not None else pathlib.Path(q.image)
    title = q.source + (f"  pid {q.pid}" if q.pid is not None else "")
    labels = [f"pid {h.pid}" for h in result.hits] if result.hits[0].pid is not None else None
    return draw_retrieval_grid(
        query,
        [h.path for h in result.hits],
        [h.score for h in result.hits],
        correct=[bool(h.correct) for h in result.hits] if result.has_ground_truth else None,
        title=title,
        labels=labels,
        cell_size=cell_size,
    )


def stack(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Paste ``images`` top to bottom on a white canvas as wide as the widest one."""
    width = max(im.width for im in images)
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height + gap
    return canvas


def _save_png(image: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_grid(results: Sequence[SearchResult], path: str) -> Image.Image:
    """All results' grids stacked top to bottom in one PNG at ``path`` (written atomically)."""
    image = stack([draw_result(r) for r in results])
    _save_png(image, path)
    return image


def save_grids(results: Sequence[SearchResult], folder: str) -> List[str]:
    """One PNG per result, ``folder/query_001.png``, ...; returns the paths."""
    paths = []
    for i, r in enumerate(results, 1):
        path = os.path.join(folder, f"query_{i:03d}.png")
        _save_png(draw_result(r), path)
        paths.append(path)
    return paths
