"""Per-query rankings saved by the evaluators (``TEST.T2I.SAVE_RANKING_TOPK``,
``TEST.VI.SAVE_RANKING_TOPK``) and read back by :mod:`fastreid_ext.visualization`.

File: ``OUTPUT_DIR/ranking_<dataset>.jsonl`` (text-to-image) or
``OUTPUT_DIR/ranking_<dataset>_<task>.jsonl`` (visible-infrared, one per task, trial 0's
gallery), written atomically after every evaluation. One JSON object per query line:

* text-to-image: ``{"format": 2, "kind": "t2i", "query": i, "caption", "pid", "ap",
  "first_match_rank", "num_positives", "ranking": [...]}``
* visible-infrared: ``{"format": 2, "kind": "vi", "task", "trial", "query", "query_img_path",
  "pid", "camid", "ap", "first_match_rank", "num_positives", "ranking": [...]}``

``ranking`` holds the top-k gallery items, best first: ``{"gallery", "img_path", "pid",
("camid",) "score", "match"}`` (``gallery`` indexes the split's, or the trial's, gallery). ``ap``
is the query's average precision (a fraction: the evaluator's mAP is 100 x its mean over queries
with a positive; SYSU-MM01's reported mAP averages that over the trials),
``first_match_rank`` the 1-based rank of its first positive in the whole (kept) gallery; both
are ``null`` without a positive.
Ranking is the evaluators': descending score, ties by gallery index; in SYSU-MM01 gallery items
of camera 2 are removed for queries of camera 3 (``exclude``). Files written before format 2
(text-to-image only: no ``format``, ``ap``, ``first_match_rank`` or gallery ``pid``) are still read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from ..data.vi.base import VIEvaluationPlan
from ..utils.atomic_io import atomic_open
from ..utils.progress import progress
from .vi_metrics import _SYSU_EXCLUDED_GALLERY_CAM, _SYSU_QUERY_CAM

__all__ = [
    "RANKING_FORMAT",
    "RankedQueries",
    "rank_queries",
    "write_ranking",
    "read_ranking",
    "RankingFileError",
    "query_records",
    "save_vi_rankings",
]

#: Version written in every record's ``"format"``.
RANKING_FORMAT = 2


class RankingFileError(ValueError):
    """A ranking file that cannot be read (the message names the file, line and field)."""


@dataclass
class RankedQueries:
    """Top-k lists and per-query retrieval quality (``Nq`` queries, ``k`` saved ranks).

    Attributes:
        topk: ``[Nq, k]`` int64 gallery indices, best first; -1 pads rows with fewer kept items.
        scores: ``[Nq, k]`` float32 scores of those items (0 at padding).
        ap: ``[Nq]`` float64 average precision (NaN for a query without a kept positive).
        first_rank: ``[Nq]`` int64 1-based rank of the first positive (0 without one).
        num_pos: ``[Nq]`` int64 kept positives.
    """

    topk: Tensor
    scores: Tensor
    ap: Tensor
    first_rank: Tensor
    num_pos: Tensor


def rank_queries(
    query_feats: Tensor,
    gallery_feats: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    k: int,
    exclude: Optional[Tuple[Tensor, Tensor]] = None,
    chunk_size: int = 256,
) -> RankedQueries:
    """Rank the gallery ``[Ng, D]`` for every query ``[Nq, D]`` by the dot product.

    Normalise the features first for a cosine ranking. ``exclude = (q_mask [Nq], g_mask [Ng])``
    (bool) removes gallery item g from query q's list when ``q_mask[q] & g_mask[g]`` (SYSU-MM01's
    camera rule). Each chunk of queries is stably sorted in full (descending score, ties by
    gallery index), so this costs about ``chunk_size * Ng * 40`` bytes and a sort per row: it
    runs only when a ranking is saved.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    qf, gf = query_feats.float(), gallery_feats.float()
    num_q, num_g = qf.shape[0], gf.shape[0]
    k = min(k, num_g)
    q_pids, g_pids = query_pids.to(torch.int64), gallery_pids.to(torch.int64)
    parts: List[Tuple[Tensor, ...]] = []
    positions = torch.arange(num_g, device=gf.device)
    starts = range(0, num_q, max(1, chunk_size))
    for lo in progress(starts, "ranking queries", log_every_s=60.0, enabled=len(starts) > 8):
        hi = min(lo + chunk_size, num_q)
        sims = qf[lo:hi] @ gf.t()
        kept_count = torch.full((hi - lo,), num_g, dtype=torch.int64, device=gf.device)
        if exclude is not None:
            removed = exclude[0][lo:hi, None].to(gf.device) & exclude[1][None, :].to(gf.device)
            sims = sims.masked_fill(removed, float("-inf"))
            kept_count -= removed.sum(1)
        scores, order = torch.sort(sims, dim=1, descending=True, stable=True)
        kept = positions[None, :] < kept_count[:, None]
        matches = (g_pids.to(gf.device)[order] == q_pids[lo:hi, None].to(gf.device)) & kept
        cum = matches.cumsum(1)
        num_pos = cum[:, -1]
        precision = cum.double() / (positions + 1).double()
        ap = (precision * matches).sum(1) / num_pos.clamp(min=1).double()
        ap = torch.where(num_pos > 0, ap, torch.full_like(ap, math.nan))
        first = torch.where(num_pos > 0, matches.double().argmax(1) + 1, 0)
        top_kept = kept[:, :k]
        topk = torch.where(top_kept, order[:, :k], -1)
        top_scores = torch.where(top_kept, scores[:, :k], 0.0)
        parts.append((topk, top_scores, ap, first, num_pos))
    cat = [torch.cat([p[i] for p in parts]).cpu() for i in range(5)]
    return RankedQueries(cat[0], cat[1], cat[2], cat[3].to(torch.int64), cat[4])


def _optional(value: float) -> Optional[float]:
    return None if math.isnan(value) else round(value, 8)


def query_records(
    ranked: RankedQueries, query_pids: List[int], gallery: List[Dict[str, Any]]
) -> Iterable[Dict]:
    """The per-query fields shared by both kinds: ``ap``, ranks and the ``ranking`` list.

    ``query_pids[i]`` is query i's identity; ``gallery[j]`` holds the fields saved for gallery
    item j (``img_path``, ``pid``, ...); ``match`` is ``gallery[j]["pid"] == query_pids[i]``."""
    for i in range(ranked.topk.shape[0]):
        first = int(ranked.first_rank[i])
        yield {
            "ap": _optional(float(ranked.ap[i])),
            "first_match_rank": first or None,
            "num_positives": int(ranked.num_pos[i]),
            "ranking": [
                {
                    "gallery": j,
                    **gallery[j],
                    "score": round(float(s), 6),
                    "match": gallery[j]["pid"] == query_pids[i],
                }
                for j, s in zip(ranked.topk[i].tolist(), ranked.scores[i].tolist())
                if j >= 0
            ],
        }


def write_ranking(path: str, records: Iterable[Dict[str, Any]]) -> None:
    """Write ``records`` (one per query, see the module doc) as JSON lines, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "w") as f:
        for record in records:
            f.write(json.dumps({"format": RANKING_FORMAT, **record}) + "\n")


def save_vi_rankings(
    plan: VIEvaluationPlan, feats: Tensor, k: int, output_dir: str, dataset_name: str
) -> List[str]:
    """Write ``ranking_<dataset>_<task>.jsonl`` for every task of ``plan`` from the features
    of its images ``[N, D]`` (dot-product ranking against trial 0's gallery, SYSU camera rule
    for ``protocol="sysu"``). Returns the paths written."""
    images = plan.images
    pids = torch.tensor([x.pid for x in images])
    cams = torch.tensor([x.camid for x in images])
    paths = []
    for task in plan.tasks:
        q, g = torch.as_tensor(task.query), torch.as_tensor(task.galleries[0])
        exclude = None
        if task.protocol == "sysu":
            exclude = (cams[q] == _SYSU_QUERY_CAM, cams[g] == _SYSU_EXCLUDED_GALLERY_CAM)
        ranked = rank_queries(feats[q], feats[g], pids[q], pids[g], k, exclude)
        items = [
            {
                "img_path": os.path.abspath(images[j].img_path),
                "pid": images[j].pid,
                "camid": images[j].camid,
            }
            for j in g.tolist()
        ]
        q_list = q.tolist()
        q_pids = [images[j].pid for j in q_list]
        path = os.path.join(output_dir, f"ranking_{dataset_name or 'vi'}_{task.name}.jsonl")
        write_ranking(
            path,
            (
                {
                    "kind": "vi",
                    "task": task.name,
                    "trial": 0,
                    "query": i,
                    "query_img_path": os.path.abspath(images[j].img_path),
                    "pid": images[j].pid,
                    "camid": images[j].camid,
                    **r,
                }
                for i, (j, r) in enumerate(zip(q_list, query_records(ranked, q_pids, items)))
            ),
        )
        paths.append(path)
    return paths


_REQUIRED = ("query", "pid", "ranking")
_REQUIRED_ITEM = ("img_path", "score", "match")


def _check_record(record: Any, where: str) -> Dict[str, Any]:
    if not isinstance(record, dict):
        raise RankingFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    version = record.get("format", 1)
    if not isinstance(version, int) or version > RANKING_FORMAT:
        raise RankingFileError(
            f"{where}: ranking format {version!r} is newer than this reader ({RANKING_FORMAT})"
        )
    kind = record.get("kind", "t2i")
    for key in _REQUIRED + (("caption",) if kind == "t2i" else ("query_img_path",)):
        if key not in record:
            raise RankingFileError(f"{where}: missing field '{key}'")
    if kind not in ("t2i", "vi"):
        raise RankingFileError(f"{where}: field 'kind' must be 't2i' or 'vi', got {kind!r}")
    if not isinstance(record["ranking"], list) or not record["ranking"]:
        raise RankingFileError(f"{where}: field 'ranking' must be a non-empty list")
    for r, item in enumerate(record["ranking"]):
        missing = [key for key in _REQUIRED_ITEM if key not in item]
        if missing:
            raise RankingFileError(f"{where}: ranking[{r}] lacks field '{missing[0]}'")
    record.setdefault("format", 1)
    record.setdefault("kind", kind)
    return record


def read_ranking(path: str) -> List[Dict[str, Any]]:
    """Records of a ranking file (format 1 or 2), in query order.

    Raises:
        FileNotFoundError: no such file. RankingFileError: a line is not a valid record (the
        message names the file, the line and the field).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ranking file not found: {path}")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise RankingFileError(f"{where}: not JSON ({e})") from e
            records.append(_check_record(record, where))
    if not records:
        raise RankingFileError(f"{path}: the ranking file is empty")
    return records
