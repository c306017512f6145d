"""Benchmark of the exact text-to-image metrics against the similarity matrix product alone.

Synthetic features with the test-set sizes of CUHK-PEDES (6,156 captions x 3,074 images) and
ICFG-PEDES (19,848 x 19,848), 1,000 identities, 512-d. Identity centres live in a 128-d subspace
(similar-looking identities), captions and images are noisy copies of their centre with a
per-sample noise scale, so positives land anywhere from rank 1 to deep in the ranking (metrics in
the range of published results). Prints, per dataset, the time of the chunked float32 product
``q @ g.T`` alone (the faster of a preallocated and an allocating output), the time of
``retrieval_metrics`` (which includes that product), their ratio, the peak RSS (or CUDA memory)
increase of its first call, and whether its values equal a naive stable argsort over the same
float32 chunks (by default at CUHK size only; ``--check always`` also runs it at ICFG size, about
a minute). Times are the minimum over ``--repeat`` interleaved runs.

    OMP_NUM_THREADS=2 python tools/benchmark_t2i_eval.py --threads 2 --repeat 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fastreid_ext.benchmark.floors import T2I_SIZES, t2i_features
from fastreid_ext.evaluation.retrieval_metrics import retrieval_metrics

DATASETS = T2I_SIZES  # name: (queries, gallery, ids, noise and spread of captions / images)


def make_features(name: str, dim: int, seed: int, device: torch.device):
    """Synthetic (query_feats, gallery_feats, query_pids, gallery_pids) for a dataset size."""
    return t2i_features(T2I_SIZES[name], dim, seed, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_only(qf, gf, chunk: int, preallocated: bool) -> None:
    """The chunked float32 similarity product, nothing else."""
    buf = torch.empty(min(chunk, len(qf)), len(gf), device=qf.device) if preallocated else None
    for lo in range(0, len(qf), chunk):
        hi = min(lo + chunk, len(qf))
        if preallocated:
            torch.mm(qf[lo:hi], gf.t(), out=buf[: hi - lo])
        else:
            _ = qf[lo:hi] @ gf.t()


def naive_metrics(qf, gf, qp, gp, chunk: int, topk=(1, 5, 10)) -> dict:
    """Definition-level reference: the same float32 chunks, a stable full argsort, float64 sums."""
    qf, gf = F.normalize(qf.float(), dim=1), F.normalize(gf.float(), dim=1)  # as retrieval_metrics
    num_g = len(gf)
    hits, ap, inp = torch.zeros(len(topk), dtype=torch.float64), 0.0, 0.0
    ranks = torch.arange(1, num_g + 1, dtype=torch.float64)
    buf = torch.empty(min(chunk, len(qf)), num_g, device=qf.device)
    for lo in range(0, len(qf), chunk):
        hi = min(lo + chunk, len(qf))
        sims = torch.mm(qf[lo:hi], gf.t(), out=buf[: hi - lo])
        order = torch.sort(-sims, dim=1, stable=True).indices.cpu()  # ties keep index order
        matches = (gp.cpu()[order] == qp[lo:hi].cpu()[:, None]).double()
        cum = matches.cumsum(1)
        for j, k in enumerate(topk):
            hits[j] += (cum[:, min(k, num_g) - 1] > 0).sum()
        num_pos = matches.sum(1)
        ap += float(((cum / ranks * matches).sum(1) / num_pos).sum())
        inp += float((num_pos / (matches * ranks).max(1).values).sum())
    out = {f"R{k}": 100 * float(h) / len(qf) for k, h in zip(topk, hits)}
    out.update(mAP=100 * ap / len(qf), mINP=100 * inp / len(qf))
    return out


def read_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(repeat: int, device: torch.device, fn, *args, **kwargs) -> float:
    """Minimum wall time of ``fn(*args, **kwargs)`` over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn(*args, **kwargs)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_dataset(name: str, args: argparse.Namespace, device: torch.device) -> str:
    """Run one dataset size; returns its markdown table row."""
    qf, gf, qp, gp = make_features(name, args.dim, args.seed, device)
    inputs = (qf, gf, qp, gp)
    # peak memory of the first call, before anything else of this size has run
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        metrics = retrieval_metrics(*inputs, chunk_size=args.chunk_size)
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        reset = reset_peak_rss()
        base = read_status_kb("VmRSS") if reset else read_status_kb("VmHWM")
        metrics = retrieval_metrics(*inputs, chunk_size=args.chunk_size)
        peak_mb = (read_status_kb("VmHWM") - base) / 1024  # a lower bound when not reset
    # interleaved repeats, so that both timings see the same load on a shared machine
    t_mm, t_metrics = float("inf"), float("inf")
    for _ in range(args.repeat):
        t_mm = min(
            t_mm,
            timed(1, device, matmul_only, qf, gf, args.chunk_size, True),
            timed(1, device, matmul_only, qf, gf, args.chunk_size, False),
        )
        t_metrics = min(
            t_metrics, timed(1, device, retrieval_metrics, *inputs, chunk_size=args.chunk_size)
        )
    check = "skipped"
    if args.check == "always" or (args.check == "auto" and len(qf) * len(gf) <= 5e7):
        want = naive_metrics(*inputs, args.chunk_size)
        diff = max(abs(metrics[k] - want[k]) for k in want)
        check = "equal" if diff <= 1e-9 else f"DIFFERENT (max |diff| {diff:.3g})"
    values = "/".join(f"{metrics[k]:.2f}" for k in ("R1", "R5", "R10", "mAP", "mINP"))
    return (
        f"| {name} | {len(qf)}x{len(gf)} | {t_mm:.3f} | {t_metrics:.3f} | "
        f"{t_metrics / t_mm:.2f} | {peak_mb:.0f} | {values} | {check} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cuhk", "icfg"], choices=DATASETS)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the minimum is shown")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check",
        choices=["auto", "always", "never"],
        default="auto",
        help="compare with a naive stable argsort (auto: when Nq*Ng <= 5e7)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    rows = [bench_dataset(name, args, device) for name in args.datasets]
    print(
        "\n| data | Nq x Ng | matmul (s) | metrics (s) | ratio | peak mem +MB "
        "| R1/R5/R10/mAP/mINP | vs naive argsort |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
