"""Exact visible-infrared ReID metrics: the SYSU-MM01 and RegDB protocols of AGW's eval_metrics.

Ranking: gallery items by descending similarity (dot product of the model's features, which the
model normalises as it wants); **ties are broken by gallery index ascending** (a stable sort;
AGW's ``np.argsort`` quicksort leaves tie order unspecified).

``protocol="sysu"`` (``eval_sysu``):
  1. every gallery item from camera 2 is removed for queries from camera 3 (same indoor
     location), whatever its identity; nothing else is removed;
  2. CMC is identity-deduplicated: the kept ranked list keeps the first occurrence of each
     identity, and rank-k counts queries whose identity is among the first k distinct ones;
  3. AP (non-interpolated, over the kept, non-deduplicated list) and INP = #positives / rank of
     the last positive are averaged over queries with at least one kept positive.
``protocol="regdb"`` (``eval_regdb``): nothing is removed (its same-identity-same-camera rule
never fires: the modalities have different cameras); CMC is the standard one.

CMC has ``min(max_rank, Ng)`` entries; a query whose deduplicated list is shorter than that
keeps its last value (AGW would fail on such ragged rows). Queries without a kept positive are
left out of every average (AGW divides its CMC sums by the number of valid queries too).

The per-query reference implementation and the trial average live in
:mod:`fastreid_ext.evaluation.vi_reference`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "VIMetrics",
    "similarity",
    "metrics_from_similarity",
    "cross_modal_metrics",
    "PROTOCOLS",
]

PROTOCOLS = ("sysu", "regdb")
#: SYSU cameras: queries of camera 3 do not see gallery items of camera 2.
_SYSU_QUERY_CAM, _SYSU_EXCLUDED_GALLERY_CAM = 3, 2


class VIMetrics(NamedTuple):
    """Metrics of one query set against one gallery, as fractions (not %).

    Attributes:
        cmc: ``[R]`` float64, R = min(max_rank, Ng): fraction of valid queries matched by rank k+1.
        mAP: mean average precision over valid queries.
        mINP: mean inverse negative penalty over valid queries.
        num_valid: queries with at least one (kept) positive.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int


def similarity(query_feats: Tensor, gallery_feats: Tensor) -> Tensor:
    """``[Nq, D] x [Ng, D] -> [Nq, Ng]`` float32 dot products (the ranking score)."""
    if query_feats.dim() != 2 or gallery_feats.dim() != 2:
        raise ValueError(
            f"features must be [N, D], got {tuple(query_feats.shape)} and "
            f"{tuple(gallery_feats.shape)}"
        )
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            f"feature dims differ: query {query_feats.shape[1]}, gallery {gallery_feats.shape[1]}"
        )
    return query_feats.float() @ gallery_feats.float().t()


def _as_long(x, n: int, name: str, device) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def _check(sim: Tensor, protocol: str, max_rank: int) -> None:
    if protocol not in PROTOCOLS:
        raise KeyError(f"protocol must be one of {PROTOCOLS}, got '{protocol}'")
    if sim.dim() != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"similarity must be a non-empty [Nq, Ng] matrix, got {tuple(sim.shape)}")
    # a finite sum rules out NaN / inf cheaply; the full check runs only when it is not
    if not torch.isfinite(sim.sum()) and not torch.isfinite(sim).all():
        raise ValueError("similarity contains NaN or infinite values")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")


def _sorted_rows(values: Tensor) -> Tensor:
    """Each row sorted ascending (values only; numpy's SIMD sort on CPU)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.numpy(), axis=1))
    return torch.sort(values, dim=1).values


def _equal_before(s: Tensor, rows: Tensor, cols: Tensor, batch: int = 256) -> Tensor:
    """For each (row, col) pair: #{j < col : s[row, j] == s[row, col]} (exact tie counts)."""
    out = torch.empty_like(cols)
    columns = torch.arange(s.shape[1], device=s.device)
    for part in torch.arange(rows.numel(), device=s.device).split(batch):
        r, c = rows[part], cols[part]
        row = s[r]
        out[part] = ((row == row.gather(1, c[:, None])) & (columns < c[:, None])).sum(1)
    return out


def _dedup_rank(
    s: Tensor, own: Tensor, own_equal: Tensor, q_slot: Tensor, g_slot: Tensor, n: int
) -> Tensor:
    """Rank of the query identity among the distinct identities of each row's ranking ``[C]``.

    ``own [C]`` is the best kept score of the query's identity and ``own_equal [C]`` how many of
    its kept items score exactly that. Identity u comes before it when one of its kept items
    scores higher, or when its best score is equal and its first item with that score has a
    smaller gallery index (exact; evaluated for the rare tied rows only).
    """
    one_hot = torch.nn.functional.one_hot(g_slot, n).to(s.dtype)  # [Ng, n]
    above = (s > own[:, None]).to(s.dtype) @ one_hot  # [C, n]: items above own per identity
    rank = (above > 0).sum(1) + 1
    tied = ((s == own[:, None]).sum(1) > own_equal).nonzero().squeeze(1)
    if tied.numel():
        sub, slot = s[tied], g_slot.expand(tied.numel(), -1)
        best = torch.full((tied.numel(), n), float("-inf"), device=s.device, dtype=s.dtype)
        best.scatter_reduce_(1, slot, sub, reduce="amax")
        columns = torch.arange(s.shape[1], device=s.device)
        at_best = torch.where(sub == best.gather(1, slot), columns, s.shape[1])
        first = torch.full((tied.numel(), n), s.shape[1], dtype=torch.int64, device=s.device)
        first.scatter_reduce_(1, slot, at_best, reduce="amin")
        own_first = first.gather(1, q_slot[tied, None])
        equal_before = (best == own[tied, None]) & (first < own_first)
        rank[tied] += equal_before.sum(1)
    return rank


def metrics_from_similarity(
    sim: Tensor,
    query_pids,
    gallery_pids,
    query_camids=None,
    gallery_camids=None,
    protocol: str = "sysu",
    max_rank: int = 20,
    chunk_size: int = 4096,
) -> VIMetrics:
    """Vectorised protocol metrics from a similarity matrix ``sim [Nq, Ng]`` (see module doc).

    No argsort: excluded items get ``-inf``, every row is value-sorted once and the rank of each
    positive is a binary search (``1 + #greater``, plus the equal items with a smaller gallery
    index, counted exactly for the rare ties). The deduplicated rank compares each identity's
    best kept score (and, on equal scores, the index of its first item achieving it) with the
    query identity's. Scores are compared in ``sim``'s dtype (float32 or float64; others are
    converted to float32). Camera ids are needed for ``protocol="sysu"`` only. Work runs on ``sim``'s
    device in chunks of ``chunk_size`` queries (about ``chunk_size * Ng * 25`` bytes each).

    Raises:
        ValueError: bad shapes / non-finite values, or no query has a kept positive.
    """
    _check(sim, protocol, max_rank)
    sim = sim.detach()
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.float()
    num_q, num_g = sim.shape
    dev = sim.device
    qp = _as_long(query_pids, num_q, "query_pids", dev)
    gp = _as_long(gallery_pids, num_g, "gallery_pids", dev)
    sysu = protocol == "sysu"
    if sysu:
        if query_camids is None or gallery_camids is None:
            raise ValueError("protocol 'sysu' needs query_camids and gallery_camids")
        q_excl = _as_long(query_camids, num_q, "query_camids", dev) == _SYSU_QUERY_CAM
        g_excl = (
            _as_long(gallery_camids, num_g, "gallery_camids", dev) == _SYSU_EXCLUDED_GALLERY_CAM
        )
    # gallery grouped by identity: query q's candidates are g_order[start[q] : start[q] + count[q]]
    sorted_gp, g_order = torch.sort(gp, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_gp, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    q_slot = torch.searchsorted(uniq, qp).clamp_(max=len(uniq) - 1)
    found = uniq[q_slot] == qp
    q_start, q_count = starts[q_slot], torch.where(found, counts[q_slot], 0)
    g_slot = torch.searchsorted(uniq, gp)
    max_pos = max(1, int(q_count.max()))
    offsets = torch.arange(max_pos, device=dev)
    rank_cap = min(max_rank, num_g)
    ks = torch.arange(1, rank_cap + 1, device=dev)
    hits = torch.zeros(rank_cap, dtype=torch.int64, device=dev)
    ap_sum = torch.zeros((), dtype=torch.float64, device=dev)
    inp_sum = torch.zeros((), dtype=torch.float64, device=dev)
    num_valid = 0
    for lo in range(0, num_q, max(1, chunk_size)):
        hi = min(lo + chunk_size, num_q)
        s = sim[lo:hi]
        valid = offsets < q_count[lo:hi, None]
        pos_idx = g_order[(q_start[lo:hi, None] + offsets).clamp_(max=num_g - 1)]
        if sysu:
            excluded = q_excl[lo:hi, None] & g_excl[None, :]
            s = s.masked_fill(excluded, float("-inf"))
            valid &= ~excluded.gather(1, pos_idx)
        pos_s = s.gather(1, pos_idx)
        ordered = _sorted_rows(s)
        not_greater = torch.searchsorted(ordered, pos_s, right=True)
        ranks = num_g - not_greater + 1
        # another item with the same score sits just below the positive in its sorted row
        below = ordered.gather(1, (not_greater - 2).clamp_(min=0))
        tied = valid & (not_greater >= 2) & (below == pos_s)
        if tied.any():
            rows, slots = tied.nonzero().unbind(1)
            ranks[rows, slots] += _equal_before(s, rows, pos_idx[rows, slots])
        ranks = torch.where(valid, ranks, num_g + 1).sort(dim=1).values
        num_pos = valid.sum(1)
        has = num_pos > 0
        if not has.any():
            continue
        in_list = offsets < num_pos[:, None]
        precision = (offsets + 1).double() / ranks.double()
        ap = (precision * in_list).sum(1) / num_pos.clamp(min=1).double()
        last = ranks.gather(1, (num_pos - 1).clamp(min=0)[:, None]).squeeze(1)
        inp = num_pos.double() / last.double()
        if sysu:
            kept_pos = pos_s.masked_fill(~valid, float("-inf"))
            own = torch.where(has, kept_pos.amax(1), 0.0)
            own_equal = (kept_pos == own[:, None]).sum(1)
            rank = _dedup_rank(s, own, own_equal, q_slot[lo:hi], g_slot, len(uniq))
        else:
            rank = ranks[:, 0]
        hits += ((rank[:, None] <= ks) & has[:, None]).sum(0)
        ap_sum += ap[has].sum()
        inp_sum += inp[has].sum()
        num_valid += int(has.sum())
    if num_valid == 0:
        raise ValueError("no query has a positive in the gallery (all query identities missing)")
    return VIMetrics(
        hits.cpu().double().numpy() / num_valid,
        float(ap_sum) / num_valid,
        float(inp_sum) / num_valid,
        num_valid,
    )


def cross_modal_metrics(
    query_feats: Tensor,
    gallery_feats: Tensor,
    query_pids,
    gallery_pids,
    query_camids=None,
    gallery_camids=None,
    protocol: str = "sysu",
    max_rank: int = 20,
    chunk_size: int = 4096,
) -> VIMetrics:
    """:func:`metrics_from_similarity` of ``query_feats [Nq, D]`` against ``gallery_feats [Ng, D]``."""
    return metrics_from_similarity(
        similarity(query_feats, gallery_feats),
        query_pids,
        gallery_pids,
        query_camids,
        gallery_camids,
        protocol,
        max_rank,
        chunk_size,
    )
