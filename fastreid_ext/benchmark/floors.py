"""Text-to-image metrics and CPCL's pseudo labels against their matrix-product floor.

Both are dominated by a similarity product: ``retrieval_metrics`` computes ``q @ g.T`` (chunked,
float32) and ranks every row; ``cluster_pseudo_labels`` (CPCL's clustering, k-reciprocal Jaccard +
DBSCAN) needs the k nearest neighbours of every feature, at least one ``x @ x.T``. The floor is
that product alone; the ratio (time / floor) is what the rest of the computation costs.

Synthetic features (:func:`t2i_features`): identity centres in a 128-d subspace, samples are
noisy copies with a per-sample noise scale, so positives land anywhere from rank 1 to deep in
the ranking (metrics in the range of published results).
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..clustering import cluster_pseudo_labels, label_counts
from ..evaluation.retrieval_metrics import retrieval_metrics

__all__ = ["T2I_SIZES", "t2i_features", "matmul_floor", "t2i_vs_floor", "pseudo_labels_vs_floor"]

# name: (queries, gallery, ids, caption noise, caption spread, image noise, image spread)
T2I_SIZES: Dict[str, Tuple[int, int, int, float, float, float, float]] = {
    "cuhk": (6156, 3074, 1000, 2.8, 0.5, 1.6, 0.15),
    "icfg": (19848, 19848, 1000, 3.5, 0.5, 2.1, 0.15),
}


def _noisy(centres: Tensor, pids: Tensor, noise: float, spread: float, gen) -> Tensor:
    dim = centres.shape[1]
    scale = noise * torch.exp(spread * torch.randn(len(pids), 1, generator=gen))
    return F.normalize(
        centres[pids] + scale * torch.randn(len(pids), dim, generator=gen) / dim**0.5
    )


def t2i_features(
    sizes: Tuple[int, int, int, float, float, float, float], dim: int, seed: int,
    device: torch.device,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(query_feats [Nq, dim], gallery_feats [Ng, dim], query_pids [Nq], gallery_pids [Ng])``
    for one row of :data:`T2I_SIZES` (or tiny sizes of the same layout)."""
    num_q, num_g, num_ids, q_noise, q_spread, g_noise, g_spread = sizes
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(128, dim, generator=gen)
    centres = F.normalize(torch.randn(num_ids, 128, generator=gen) @ basis, dim=1)
    gallery_pids = (torch.arange(num_g) % num_ids)[torch.randperm(num_g, generator=gen)]
    query_pids = gallery_pids[torch.arange(num_q) % num_g]  # captions of gallery image i % Ng
    qf = _noisy(centres, query_pids, q_noise, q_spread, gen)
    gf = _noisy(centres, gallery_pids, g_noise, g_spread, gen)
    return qf.to(device), gf.to(device), query_pids.to(device), gallery_pids.to(device)


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU. Timings read the clock after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object]) -> float:
    sync_device(device)
    t0 = time.perf_counter()
    fn()
    sync_device(device)
    return time.perf_counter() - t0


def matmul_floor(a: Tensor, b: Tensor, chunk: int) -> None:
    """The chunked float32 product ``a @ b.T`` into a preallocated buffer, nothing else."""
    buf = torch.empty(min(chunk, len(a)), len(b), device=a.device)
    for lo in range(0, len(a), chunk):
        hi = min(lo + chunk, len(a))
        torch.mm(a[lo:hi], b.t(), out=buf[: hi - lo])


def t2i_vs_floor(
    sizes, device: torch.device, repeat: int, dim: int = 512, chunk: int = 2048
) -> Dict[str, object]:
    """``retrieval_metrics`` time against ``matmul_floor`` (minimum over ``repeat`` interleaved
    runs) and the metric values."""
    qf, gf, qp, gp = t2i_features(sizes, dim, 0, device)
    metrics = retrieval_metrics(qf, gf, qp, gp, chunk_size=chunk)  # warm-up, and the values
    t_mm = t_m = float("inf")
    for _ in range(repeat):
        t_mm = min(t_mm, _timed(device, lambda: matmul_floor(qf, gf, chunk)))
        t_m = min(t_m, _timed(device, lambda: retrieval_metrics(qf, gf, qp, gp, chunk_size=chunk)))
    return {
        "queries": len(qf),
        "gallery": len(gf),
        "matmul_s": t_mm,
        "metrics_s": t_m,
        "ratio": t_m / t_mm,
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def pseudo_labels_vs_floor(
    num: int, num_ids: int, device: torch.device, dim: int = 512, chunk: int = 2048,
    k1: int = 30, k2: int = 6, eps: float = 0.6, min_samples: int = 4,
) -> Dict[str, object]:  # fmt: skip
    """CPCL's clustering (``cluster_pseudo_labels`` with its config's k1/k2/eps/min_samples) of
    ``num`` features ``[num, dim]`` on ``device`` against the ``x @ x.T`` floor."""
    sizes = (num, num, num_ids, 2.0, 0.3, 2.0, 0.3)
    feats = t2i_features(sizes, dim, 1, device)[0]
    t_mm = _timed(device, lambda: matmul_floor(feats, feats, chunk))
    timings: Dict[str, float] = {}
    out: Dict[str, object] = {}

    def run() -> None:
        out["labels"] = cluster_pseudo_labels(
            feats, k1=k1, k2=k2, eps=eps, min_samples=min_samples, timings=timings
        )

    t_c = _timed(device, run)
    clusters, outliers = label_counts(out["labels"])
    return {
        "num": num,
        "matmul_s": t_mm,
        "pseudo_labels_s": t_c,
        "ratio": t_c / t_mm,
        "clusters": int(clusters),
        "outliers": int(outliers),
        "stages_s": {k: float(v) for k, v in timings.items()},
    }
