"""Retrieval grids and the worst-queries page of an evaluation run.

From every ``ranking_*.jsonl`` of a run folder (saved with ``TEST.T2I.SAVE_RANKING_TOPK`` or
``TEST.VI.SAVE_RANKING_TOPK``, format: :mod:`fastreid_ext.evaluation.rankings`) this writes, in
``<output>/<name>/`` (``name`` = the file name without ``ranking_`` and ``.jsonl``):

* ``grids/query_<i>.png``: ``num_queries`` queries spread evenly over the file (query ``i``'s
  caption or image and its top-k gallery, correct items green, wrong ones red);
* ``worst_queries.html``: the ``worst`` queries with the lowest AP (ties: lower query index
  first), a table of query, pid, AP, rank of the first correct item and the grid
  (``grids/worst_<n>_query_<i>.png``), and ``worst_queries.png``, all those grids on one sheet.

Files written before ranking format 2 have no per-query AP: their grids are drawn and the
worst-queries page is skipped with a message saying so.
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..evaluation.rankings import read_ranking
from ..utils.atomic_io import atomic_write_bytes, atomic_write_text
from ..utils.progress import progress
from .grid import COLORS, GAP, draw_retrieval_grid

__all__ = [
    "RankingReport",
    "find_ranking_files",
    "grid_of",
    "spread_queries",
    "worst_queries",
    "contact_sheet",
    "visualize_ranking",
]


@dataclass
class RankingReport:
    """What :func:`visualize_ranking` wrote for one ranking file."""

    ranking_file: str
    kind: str
    grids: List[str] = field(default_factory=list)
    worst_html: Optional[str] = None
    worst_png: Optional[str] = None
    skipped: Optional[str] = None


def find_ranking_files(run_dir: str) -> List[str]:
    """Sorted ``ranking_*.jsonl`` paths directly inside ``run_dir``."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    names = sorted(
        n for n in os.listdir(run_dir) if n.startswith("ranking_") and n.endswith(".jsonl")
    )
    return [os.path.join(run_dir, n) for n in names]


def spread_queries(num_records: int, n: int) -> List[int]:
    """``min(n, num_records)`` record positions evenly spread over ``0..num_records-1``."""
    if n <= 0 or num_records == 0:
        return []
    n = min(n, num_records)
    return sorted({int(round(x)) for x in np.linspace(0, num_records - 1, n)})


def worst_queries(records: Sequence[Dict[str, Any]], n: int) -> List[Dict[str, Any]]:
    """The ``n`` records with the lowest ``ap`` (ties: lower ``query`` first); records whose AP
    is ``None`` (no positive in the gallery) are left out.

    Raises:
        ValueError: the records have no ``ap`` field (ranking format 1).
    """
    if records and "ap" not in records[0]:
        raise ValueError(
            "the ranking has no per-query AP (written before ranking format 2); evaluate the "
            "checkpoint again with TEST.T2I.SAVE_RANKING_TOPK / TEST.VI.SAVE_RANKING_TOPK"
        )
    scored = [r for r in records if r.get("ap") is not None]
    return sorted(scored, key=lambda r: (float(r["ap"]), int(r["query"])))[: max(0, n)]


def _label(item: Dict[str, Any]) -> str:
    parts = []
    if "pid" in item:
        parts.append(f"pid {item['pid']}")
    if "camid" in item:
        parts.append(f"cam {item['camid']}")
    return " ".join(parts)


def _title(record: Dict[str, Any]) -> str:
    parts = [f"query {record['query']}", f"pid {record['pid']}"]
    if "camid" in record:
        parts.append(f"cam {record['camid']}")
    if record.get("ap") is not None:
        parts.append(f"AP {100 * float(record['ap']):.1f}%")
    if "first_match_rank" in record:
        first = record["first_match_rank"]
        parts.append(f"first correct: #{first}" if first else "no correct item")
    return " | ".join(parts)


def grid_of(
    record: Dict[str, Any], topk: int, cell_size: Tuple[int, int] = (128, 64)
) -> Image.Image:
    """:func:`draw_retrieval_grid` of one ranking record (its first ``topk`` items)."""
    items = record["ranking"][:topk]
    # a str query is caption text for draw_retrieval_grid, a Path an image file
    query = record["caption"] if record["kind"] == "t2i" else Path(record["query_img_path"])
    labels = [_label(it) for it in items]
    return draw_retrieval_grid(
        query,
        [it["img_path"] for it in items],
        [float(it["score"]) for it in items],
        [bool(it["match"]) for it in items],
        title=_title(record),
        labels=labels if any(labels) else None,
        cell_size=cell_size,
    )


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(grids: Sequence[Image.Image]) -> Image.Image:
    """The grids stacked top to bottom (left-aligned, ``GAP`` pixels apart) on one image."""
    if not grids:
        raise ValueError("contact_sheet: no grid to place")
    width = max(g.width for g in grids)
    height = sum(g.height for g in grids) + GAP * (len(grids) - 1)
    sheet = Image.new("RGB", (width, height), COLORS["background"])
    y = 0
    for g in grids:
        sheet.paste(g, (0, y))
        y += g.height + GAP
    return sheet


def _worst_page(name: str, rows: List[Tuple[Dict[str, Any], str]]) -> str:
    body = []
    for n, (r, grid_rel) in enumerate(rows, 1):
        query = r["caption"] if r["kind"] == "t2i" else os.path.basename(r["query_img_path"])
        first = r.get("first_match_rank")
        body.append(
            "<tr>"
            f"<td>{n}</td><td>{r['query']}</td><td>{html.escape(str(query))}</td>"
            f"<td>{r['pid']}</td><td>{100 * float(r['ap']):.2f}</td>"
            f"<td>{first if first else 'none'}</td>"
            f'<td><img src="{html.escape(grid_rel)}" alt="query {r["query"]}"></td>'
            "</tr>"
        )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Worst queries: {html.escape(name)}</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top}table{border-collapse:collapse}</style></head><body>"
        f"<h1>Worst queries (lowest AP): {html.escape(name)}</h1>"
        "<p>Green border: correct gallery item (same identity); red: wrong. AP in %; rank of "
        "the first correct item in the whole gallery.</p>"
        "<table><tr><th>#</th><th>query</th><th>text / image</th><th>pid</th><th>AP</th>"
        "<th>first correct rank</th><th>top-k</th></tr>\n"
        + "\n".join(body)
        + "\n</table></body></html>\n"
    )


def visualize_ranking(
    ranking_file: str,
    output_dir: str,
    topk: int = 10,
    num_queries: int = 10,
    worst: int = 20,
    cell_size: Tuple[int, int] = (128, 64),
) -> RankingReport:
    """Write the grids and the worst-queries page of one ranking file into ``output_dir``."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    records = read_ranking(ranking_file)
    report = RankingReport(ranking_file, records[0]["kind"])
    grid_dir = os.path.join(output_dir, "grids")
    os.makedirs(grid_dir, exist_ok=True)
    picked = [records[i] for i in spread_queries(len(records), num_queries)]
    for r in progress(picked, "retrieval grids", log_every_s=60.0, enabled=len(picked) > 50):
        path = os.path.join(grid_dir, f"query_{int(r['query']):06d}.png")
        atomic_write_bytes(path, _png(grid_of(r, topk, cell_size)))
        report.grids.append(path)
    if worst <= 0:
        return report
    try:
        bad = worst_queries(records, worst)
    except ValueError as e:
        report.skipped = f"{ranking_file}: {e}"
        return report
    rows, images = [], []
    for n, r in enumerate(bad, 1):
        grid = grid_of(r, topk, cell_size)
        rel = f"grids/worst_{n:03d}_query_{int(r['query']):06d}.png"
        atomic_write_bytes(os.path.join(output_dir, rel), _png(grid))
        rows.append((r, rel))
        images.append(grid)
    name = os.path.basename(ranking_file)
    report.worst_html = os.path.join(output_dir, "worst_queries.html")
    atomic_write_text(report.worst_html, _worst_page(name, rows))
    if images:
        report.worst_png = os.path.join(output_dir, "worst_queries.png")
        atomic_write_bytes(report.worst_png, _png(contact_sheet(images)))
    return report
