"""Exact text-to-image retrieval metrics (IRRA protocol: R@K, mAP, mINP) without a full argsort.

Protocol (IRRA ``utils/metrics.py``): every query is ranked against the whole gallery by the
similarity of L2-normalised features; no re-ranking, no camera filtering, no removal.

* Ranking: descending similarity; **ties are broken by gallery index ascending** (what a stable
  descending sort gives). The rank of a gallery item is therefore
  ``1 + #{i: s_i > s} + #{i: s_i == s and i < index}``.
* R@K: % of queries with at least one positive (same pid) among the first K gallery items. A K
  larger than the gallery means the whole gallery (so R@K = 100).
* AP = (1/#pos) * sum over positives of precision at the positive's rank; mAP = mean AP (%).
* INP = #pos / rank of the last positive; mINP = mean INP (%).

How it stays cheap: similarities are computed in float32, ``chunk_size`` queries at a time. Each
chunk's similarities are mapped (order-preserving) to int32 keys; the keys below a row's lowest
positive are raised to one common value just under it (no count changes, and the sort gets much
cheaper); every row is then sorted by value -- an integer value sort, not an argsort (numpy's SIMD
sort on CPU, on ``torch.get_num_threads()`` threads; ``torch.sort`` elsewhere). The rank of each
positive is one binary search of its key in its sorted row. Exact ties between a positive and any
other item are detected from the sorted neighbour; for those (rare) positives the equal items with
a smaller gallery index are counted by a row scan (or a stable sort of rows with many tied
positives). Extra memory is about ``chunk_size * Ng * 8`` bytes plus ``chunk_size * max #pos * 8``
times a few.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

__all__ = ["retrieval_metrics"]

logger = logging.getLogger(__name__)

_INT32_LOW_BITS = 0x7FFFFFFF
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# A row with more tied positives than this is re-ranked by a stable sort instead of row scans.
_MAX_ROW_SCANS = 16


def _ordered_int32_keys(values: Tensor, out: Tensor | None = None) -> Tensor:
    """Map float32 ``values`` to int32 keys with the same order (``a < b`` iff ``key(a) < key(b)``).

    The bits of a non-negative float already sort like integers; for negative floats the 31 low
    bits are flipped so that larger magnitudes sort lower. ``values`` must be free of ``-0.0``
    (add ``0.0`` first) and NaN. ``out`` (int32, same shape) receives the keys when given.
    """
    bits = values.view(torch.int32)
    if out is None:
        out = torch.empty_like(bits)
    torch.bitwise_right_shift(bits, 31, out=out)  # 0 or -1 (arithmetic shift)
    out.bitwise_and_(_INT32_LOW_BITS)
    out.bitwise_xor_(bits)
    return out


def _sort_rows_(keys: Tensor, pool: ThreadPoolExecutor | None, workers: int) -> None:
    """Sort every row of the int32 matrix ``keys`` ascending, in place (``workers`` threads)."""
    if keys.device.type != "cpu":
        keys.copy_(torch.sort(keys, dim=1).values)
        return
    array = keys.numpy()  # shares memory; numpy's int32 sort is SIMD-accelerated on x86
    if pool is None or workers <= 1 or array.shape[0] < 2 * workers or array.size < 200_000:
        array.sort(axis=1)
        return
    bounds = np.linspace(0, array.shape[0], workers + 1).astype(int)
    jobs = [pool.submit(array[lo:hi].sort, axis=1) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for job in jobs:
        job.result()


def _stable_ranks(sims: Tensor, gallery_idx: Tensor) -> Tensor:
    """Stable 1-based ranks of ``gallery_idx`` [R, P] in ``sims`` [R, Ng]."""
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices
    positions = torch.arange(1, sims.shape[1] + 1, device=sims.device).expand_as(order)
    rank_of = torch.empty_like(order).scatter_(1, order, positions)
    return rank_of.gather(1, gallery_idx)


def _equal_before_counts(sims: Tensor, rows: Tensor, gallery_idx: Tensor, batch: int) -> Tensor:
    """For each (row, gallery index j) pair: #{i < j: sims[row, i] == sims[row, j]}.

    ``rows`` and ``gallery_idx`` are [T]; the work is done ``batch`` pairs at a time ([batch, Ng]).
    """
    counts = torch.empty_like(gallery_idx)
    columns = torch.arange(sims.shape[1], device=sims.device)
    for part in torch.arange(rows.numel(), device=sims.device).split(batch):
        row_sims = sims[rows[part]]
        values = row_sims.gather(1, gallery_idx[part, None])
        before = columns < gallery_idx[part, None]
        counts[part] = ((row_sims == values) & before).sum(1)
    return counts


def _positive_lists(query_pids: Tensor, gallery_pids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Group the gallery by pid: query q's positives are ``order[start[q] : start[q] + count[q]]``.

    Returns ``order`` [Ng] (gallery indices grouped by pid, ascending within a pid), ``start`` [Nq]
    and ``count`` [Nq] (0 for a query whose pid is absent from the gallery).
    """
    sorted_pids, order = torch.sort(gallery_pids, stable=True)
    unique_pids, counts = torch.unique_consecutive(sorted_pids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(unique_pids, query_pids).clamp_(max=unique_pids.numel() - 1)
    found = unique_pids[slot] == query_pids
    return order, starts[slot], torch.where(found, counts[slot], torch.zeros_like(counts[slot]))


def _positive_ranks(
    sims: Tensor,
    keys: Tensor,
    pos_idx: Tensor,
    valid: Tensor,
    pool: ThreadPoolExecutor | None,
    workers: int,
) -> Tensor:
    """Stable 1-based ranks [C, P] of the gallery items ``pos_idx`` [C, P] in each row of ``sims``.

    ``sims`` [C, Ng] float32 (no -0.0); ``keys`` an int32 [C, Ng] work buffer; ``valid`` [C, P]
    marks the real entries of ``pos_idx`` (padding is ignored; its ranks are meaningless).
    rank = 1 + #{greater} + #{equal with a smaller gallery index}.
    """
    num_g = sims.shape[1]
    pos_keys = _ordered_int32_keys(sims.gather(1, pos_idx))
    # Items below a row's lowest positive only matter through their count: raising them all to
    # one value under it leaves every count unchanged and makes the row sort several times faster.
    lowest = torch.where(valid, pos_keys, torch.full_like(pos_keys, _INT32_MAX)).amin(1)
    # (a row without positives -- a skipped query -- becomes constant; its ranks are unused)
    floor = lowest.clamp_(min=_INT32_MIN + 1).sub_(1)
    _ordered_int32_keys(sims, out=keys)
    torch.maximum(keys, floor[:, None], out=keys)
    _sort_rows_(keys, pool, workers)

    num_le = torch.searchsorted(keys, pos_keys, right=True)  # items with key <= own key
    ranks = num_g - num_le + 1
    below = keys.gather(1, (num_le - 2).clamp_(min=0))
    tied = valid & (num_le >= 2) & (below == pos_keys)
    if tied.any():  # exact float32 ties are rare, but they do happen at ICFG scale
        # few tied positives in a row: scan the row once per tied positive; many: sort the row
        many = tied.sum(1) > _MAX_ROW_SCANS
        for part in many.nonzero().squeeze(1).split(max(1, sims.shape[0] // 8)):
            ranks[part] = _stable_ranks(sims[part], pos_idx[part])
        rows, cols = (tied & ~many[:, None]).nonzero().unbind(1)
        ranks[rows, cols] += _equal_before_counts(sims, rows, pos_idx[rows, cols], sims.shape[0])
    return ranks


def _check_inputs(qf: Tensor, gf: Tensor, qp: Tensor, gp: Tensor, chunk_size: int) -> None:
    for name, feats in (("query_feats", qf), ("gallery_feats", gf)):
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise ValueError(
                f"{name} must be a non-empty [N, D] tensor, got shape {tuple(feats.shape)}"
            )
        if not torch.isfinite(feats).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"feature dims differ: query_feats D={qf.shape[1]}, gallery_feats D={gf.shape[1]}"
        )
    for name, pids, feats in (("query_pids", qp, qf), ("gallery_pids", gp, gf)):
        if pids.dim() != 1 or pids.shape[0] != feats.shape[0]:
            raise ValueError(f"{name} must have shape [{feats.shape[0]}], got {tuple(pids.shape)}")
        if pids.dtype.is_floating_point or pids.dtype.is_complex or pids.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got dtype {pids.dtype}")
    devices = {t.device for t in (qf, gf, qp, gp)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def retrieval_metrics(
    query_feats: Tensor,
    gallery_feats: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    topk: Sequence[int] = (1, 5, 10),
    normalize: bool = True,
    chunk_size: int = 2048,
    return_topk_indices: int = 0,
    progress: bool = False,
    skip_queries_without_positive: bool = False,
) -> dict:
    """Exact R@K, mAP and mINP of ranking the gallery for every query (IRRA protocol).

    Args:
        query_feats: [Nq, D] query (text) features.
        gallery_feats: [Ng, D] gallery (image) features, same device as the queries.
        query_pids: [Nq] integer identities of the queries.
        gallery_pids: [Ng] integer identities of the gallery items.
        topk: the K of the reported R@K (positive integers; K >= Ng means the whole gallery).
        normalize: L2-normalise the features first (similarity = cosine).
        chunk_size: queries per similarity chunk; extra memory is about chunk_size * Ng * 8 bytes.
        return_topk_indices: if > 0, also return the first ``min(k, Ng)`` gallery indices of every
            query's ranking (stable order: descending similarity, ties by gallery index).
        progress: show a tqdm bar over chunks.
        skip_queries_without_positive: a query whose pid is absent from the gallery makes AP
            undefined; by default that raises ``ValueError``, with this flag such queries are left
            out of every metric (a warning is logged) but still get ``topk_indices``.

    Returns:
        ``{"R1": float, "R5": float, "R10": float, "mAP": float, "mINP": float}`` (one ``R{K}`` per
        requested K, all in percent) plus ``"topk_indices"`` (LongTensor [Nq, min(k, Ng)]) when
        ``return_topk_indices > 0``. Similarities are float32 whatever the input dtype; the work
        runs on the features' device.
    """
    _check_inputs(query_feats, gallery_feats, query_pids, gallery_pids, chunk_size)
    ks = sorted({int(k) for k in topk})
    if not ks or ks[0] < 1:
        raise ValueError(f"topk must be a non-empty sequence of positive integers, got {topk!r}")
    if return_topk_indices < 0:
        raise ValueError(f"return_topk_indices must be >= 0, got {return_topk_indices}")

    device = query_feats.device
    qf, gf = query_feats.float(), gallery_feats.float()
    if normalize:
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    gf_t = gf.t()
    num_q, num_g = qf.shape[0], gf.shape[0]

    order, pos_start, pos_count = _positive_lists(
        query_pids.to(torch.int64), gallery_pids.to(torch.int64)
    )
    num_without = int((pos_count == 0).sum())
    if num_without:
        msg = f"{num_without} of {num_q} queries have no positive (same pid) in the gallery"
        if not skip_queries_without_positive:
            raise ValueError(msg + "; pass skip_queries_without_positive=True to leave them out")
        logger.warning("%s; they are left out of R@K, mAP and mINP", msg)
        if num_without == num_q:
            raise ValueError(msg + "; nothing to evaluate")

    k_ret = min(int(return_topk_indices), num_g)
    chunk = min(chunk_size, num_q)
    sims_buf = torch.empty(chunk, num_g, dtype=torch.float32, device=device)
    keys_buf = torch.empty(chunk, num_g, dtype=torch.int32, device=device)
    hits = torch.zeros(len(ks), dtype=torch.int64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    topk_chunks = []
    ks_t = torch.tensor(ks, device=device)
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        starts = range(0, num_q, chunk)
        for lo in tqdm(starts, desc="t2i retrieval", disable=not progress, total=len(starts)):
            hi = min(lo + chunk, num_q)
            sims = sims_buf[: hi - lo]
            torch.mm(qf[lo:hi], gf_t, out=sims)
            sims.add_(0.0)  # -0.0 -> +0.0, so that equal similarities get equal keys
            if k_ret:
                topk_chunks.append(_stable_topk(sims, k_ret))
            count = pos_count[lo:hi]
            max_pos = int(count.max())
            if max_pos == 0:
                continue
            offsets = torch.arange(max_pos, device=device)
            valid = offsets < count[:, None]
            slots = (pos_start[lo:hi, None] + offsets).clamp_(max=num_g - 1)
            pos_idx = torch.where(valid, order[slots], torch.zeros_like(slots))
            ranks = _positive_ranks(sims, keys_buf[: hi - lo], pos_idx, valid, pool, workers)

            ranks = torch.where(valid, ranks, torch.full_like(ranks, num_g + 1)).sort(dim=1).values
            has_pos = count > 0
            hits += ((ranks[:, :1] <= ks_t) & has_pos[:, None]).sum(0)
            precision = offsets.to(torch.float64).add_(1) / ranks.to(torch.float64)
            num_pos = count.clamp(min=1).to(torch.float64)
            ap_sum += ((precision * valid).sum(1) / num_pos)[has_pos].sum()
            last = ranks.gather(1, (count - 1).clamp_(min=0)[:, None]).squeeze(1)
            inp_sum += (count.to(torch.float64) / last.to(torch.float64))[has_pos].sum()
    finally:
        if pool is not None:
            pool.shutdown()

    num_eval = num_q - num_without
    result = {f"R{k}": 100.0 * int(h) / num_eval for k, h in zip(ks, hits.tolist())}
    result["mAP"] = 100.0 * float(ap_sum) / num_eval
    result["mINP"] = 100.0 * float(inp_sum) / num_eval
    if k_ret:
        result["topk_indices"] = torch.cat(topk_chunks)
    return result


def _stable_topk(sims: Tensor, k: int) -> Tensor:
    """First ``k`` gallery indices [C, k] of each row's stable descending ranking of ``sims``.

    ``torch.topk`` gives the right set and order when the first k+1 values are distinct; rows
    with a tie among them are re-ranked with a stable sort.
    """
    values, indices = torch.topk(sims, min(k + 1, sims.shape[1]), dim=1, sorted=True)
    indices = indices[:, :k]
    tied_rows = (values[:, 1:] == values[:, :-1]).any(1).nonzero().squeeze(1)
    for part in tied_rows.split(max(1, sims.shape[0] // 8)):
        indices[part] = torch.sort(sims[part], dim=1, descending=True, stable=True).indices[:, :k]
    return indices
