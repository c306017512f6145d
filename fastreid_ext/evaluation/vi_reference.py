"""Per-query reference implementation of the visible-infrared protocols, and trial averaging.

:func:`reference_metrics_from_similarity` is the straightforward loop (one query at a time) that
the vectorised :func:`~fastreid_ext.evaluation.vi_metrics.metrics_from_similarity` is tested and
benchmarked against; :func:`average_trials` turns per-trial metrics into the reported numbers.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .vi_metrics import _SYSU_EXCLUDED_GALLERY_CAM, _SYSU_QUERY_CAM, VIMetrics, _check

__all__ = ["reference_metrics_from_similarity", "average_trials"]


def reference_metrics_from_similarity(
    sim: np.ndarray,
    query_pids: Sequence[int],
    gallery_pids: Sequence[int],
    query_camids: Optional[Sequence[int]] = None,
    gallery_camids: Optional[Sequence[int]] = None,
    protocol: str = "sysu",
    max_rank: int = 20,
) -> VIMetrics:
    """Straightforward per-query implementation of the same protocol (tests and benchmarks).

    ``sim [Nq, Ng]`` (higher = more similar), pids ``[Nq]`` / ``[Ng]``, camera ids likewise
    (``protocol="sysu"`` only). For each query: stable ranking, the exclusion mask, the deduplicated identity list
    (``np.unique`` first occurrences), cumulative sums, AP and INP -- one query at a time.
    """
    sim = np.asarray(sim)
    _check(torch.from_numpy(sim), protocol, max_rank)
    q_pids, g_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    num_q, num_g = sim.shape
    rank_cap = min(max_rank, num_g)
    sysu = protocol == "sysu"
    if sysu:
        q_cams, g_cams = np.asarray(query_camids), np.asarray(gallery_camids)
    cmc_sum = np.zeros(rank_cap)
    aps, inps = [], []
    for q in range(num_q):
        order = np.argsort(-sim[q], kind="stable")
        ranked = g_pids[order]
        if sysu and q_cams[q] == _SYSU_QUERY_CAM:
            ranked = ranked[g_cams[order] != _SYSU_EXCLUDED_GALLERY_CAM]
        matches = ranked == q_pids[q]
        if not matches.any():
            continue
        cum = np.cumsum(matches)
        if sysu:
            _, first = np.unique(ranked, return_index=True)
            row = np.cumsum(ranked[np.sort(first)] == q_pids[q])
        else:
            row = np.minimum(cum, 1)
        row = np.concatenate([row, np.full(max(0, rank_cap - len(row)), row[-1])])[:rank_cap]
        cmc_sum += row
        hit_positions = np.flatnonzero(matches)
        aps.append(np.mean(cum[hit_positions] / (hit_positions + 1.0)))
        inps.append(cum[hit_positions[-1]] / (hit_positions[-1] + 1.0))
    if not aps:
        raise ValueError("no query has a positive in the gallery (all query identities missing)")
    return VIMetrics(cmc_sum / len(aps), float(np.mean(aps)), float(np.mean(inps)), len(aps))


def average_trials(trials: Sequence[VIMetrics], ranks: Sequence[int] = (1, 5, 10, 20)) -> Dict:
    """Mean over trials, in %: ``{"R1", "R5", "R10", "R20", "mAP", "mINP"}`` (ranks beyond the
    shortest trial's CMC length ``[R]`` take its last value)."""
    if not trials:
        raise ValueError("average_trials needs at least one trial")
    length = min(len(t.cmc) for t in trials)
    cmc = np.mean([t.cmc[:length] for t in trials], axis=0)
    out = {f"R{k}": 100.0 * float(cmc[min(k, length) - 1]) for k in ranks}
    out["mAP"] = 100.0 * float(np.mean([t.mAP for t in trials]))
    out["mINP"] = 100.0 * float(np.mean([t.mINP for t in trials]))
    return out
