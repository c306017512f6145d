#!/usr/bin/env python3
"""Speed of the visible-infrared evaluation against a per-query loop of the same protocol.

Two workloads at real sizes, with synthetic features (identity centre + noise, two separately
L2-normalised 1536-d halves as CSDN's test feature):

* SYSU-MM01 all-search, single-shot: 3,803 infrared queries against 10 gallery trials of 301
  visible images (one image drawn per (identity, camera) folder, 96 identities), 3,072-d.
* RegDB, one trial: 2,060 visible queries against 2,060 thermal images (206 identities).

"fast" is the evaluator's code path (``evaluate_plan``: one similarity against the union of the
trial galleries, vectorised ranking and metrics, on ``--device``); "loop" computes each trial's
similarity on ``--device`` and then the metrics one query at a time on the CPU
(``reference_metrics_from_similarity``, numpy). Both must give the same numbers; the script
prints the largest difference and both speed-ups: of the metric computation alone (the part the
two implementations do differently) and end to end (including the similarity products, which
dominate the fast path on a CPU). GPU timings synchronise before reading the clock.

Examples:
    OMP_NUM_THREADS=1 python tools/benchmark_vi_eval.py
    python tools/benchmark_vi_eval.py --device cuda
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from fastreid_ext.data.vi.base import INFRARED, VISIBLE, VIEvaluationPlan, VIImage, VIRetrievalTask
from fastreid_ext.evaluation.vi_evaluator import evaluate_plan
from fastreid_ext.evaluation.vi_metrics import similarity
from fastreid_ext.evaluation.vi_reference import average_trials, reference_metrics_from_similarity


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed fast runs (best is reported)")
    p.add_argument("--loop-repeats", type=int, default=2, help="timed loop runs (best reported)")
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--noise", type=float, default=4.0, help="feature noise around identity centres")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: keep the default)")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where features and metrics live"
    )
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _features(pids: np.ndarray, centres: torch.Tensor, noise: float, gen) -> torch.Tensor:
    x = centres[torch.as_tensor(pids)] + noise * torch.randn(
        len(pids), centres.shape[1], generator=gen
    )
    half = x.shape[1] // 2
    return torch.cat([F.normalize(x[:, :half], dim=1), F.normalize(x[:, half:], dim=1)], dim=1)


def sysu_workload(args, gen) -> Tuple[VIEvaluationPlan, torch.Tensor]:
    """3,803 queries over cameras 3 / 6 and 301 visible (identity, camera) folders of ~20 images."""
    rng = np.random.default_rng(args.seed)
    ids = np.arange(1, 97)
    folders = [(int(p), c) for p in ids for c in (1, 2, 4, 5)]
    folders = [folders[i] for i in sorted(rng.choice(len(folders), 301, replace=False))]
    query_pids = np.sort(rng.choice(ids, 3803))
    query = [
        VIImage(f"q{i}", int(p), int(rng.choice([3, 6])), INFRARED)
        for i, p in enumerate(query_pids)
    ]
    files = {f: [f"g{f[0]}_{f[1]}_{k}" for k in range(int(rng.integers(10, 30)))] for f in folders}
    images = list(query)
    index: Dict[str, int] = {}
    galleries = []
    for trial in range(args.trials):
        draw = random.Random(trial)
        idx = []
        for pid, cam in folders:
            name = draw.choice(files[(pid, cam)])
            if name not in index:
                index[name] = len(images)
                images.append(VIImage(name, pid, cam, VISIBLE))
            idx.append(index[name])
        galleries.append(np.asarray(idx))
    task = VIRetrievalTask("all-single", "sysu", np.arange(len(query)), galleries)
    centres = torch.randn(200, args.dim, generator=gen)
    feats = _features(np.array([x.pid for x in images]), centres, args.noise, gen)
    return VIEvaluationPlan(images, [task]), feats


def regdb_workload(args, gen) -> Tuple[VIEvaluationPlan, torch.Tensor]:
    """206 identities x 10 images per modality; visible queries, thermal gallery."""
    pids = np.repeat(np.arange(206), 10)
    vis = [VIImage(f"v{i}", int(p), 1, VISIBLE) for i, p in enumerate(pids)]
    thr = [VIImage(f"t{i}", int(p), 2, INFRARED) for i, p in enumerate(pids)]
    n = len(vis)
    task = VIRetrievalTask("v2i", "regdb", np.arange(n), [np.arange(n, 2 * n)])
    centres = torch.randn(206, args.dim, generator=gen)
    feats = _features(np.concatenate([pids, pids]), centres, args.noise, gen)
    return VIEvaluationPlan(vis + thr, [task]), feats


def loop_evaluate(plan: VIEvaluationPlan, feats: torch.Tensor) -> Tuple[Dict, float]:
    """Per trial: similarity, then the per-query reference metrics. Returns (metrics, metric s)."""
    task = plan.tasks[0]
    pids = np.array([x.pid for x in plan.images])
    cams = np.array([x.camid for x in plan.images])
    q = task.query
    trials, metric_time = [], 0.0
    for g in task.galleries:
        sim = similarity(feats[torch.as_tensor(q)], feats[torch.as_tensor(g)]).cpu().numpy()
        start = time.perf_counter()
        trials.append(
            reference_metrics_from_similarity(
                sim, pids[q], pids[g], cams[q], cams[g], protocol=task.protocol
            )
        )
        metric_time += time.perf_counter() - start
    return average_trials(trials), metric_time


def run(
    name: str, plan: VIEvaluationPlan, feats: torch.Tensor, repeats: int, loop_repeats: int
) -> bool:
    """Time both implementations on one workload, print the table row; True if numbers agree."""
    task = plan.tasks[0]
    fast_time, fast_metric_time, fast = float("inf"), float("inf"), None
    for _ in range(repeats):
        timings: Dict[str, float] = {}
        _sync(feats.device)
        start = time.perf_counter()
        fast = evaluate_plan(plan, feats, timings=timings)[task.name]
        _sync(feats.device)
        fast_time = min(fast_time, time.perf_counter() - start)
        fast_metric_time = min(fast_metric_time, timings["metrics"])
    loop_time, loop_metric_time, loop = float("inf"), float("inf"), None
    for _ in range(loop_repeats):
        _sync(feats.device)
        start = time.perf_counter()
        loop, metric_time = loop_evaluate(plan, feats)
        loop_time = min(loop_time, time.perf_counter() - start)
        loop_metric_time = min(loop_metric_time, metric_time)
    diff = max(abs(fast[k] - loop[k]) for k in fast)
    print(
        f"{name:30s} end to end: fast {fast_time:6.3f} s, loop {loop_time:6.3f} s "
        f"({loop_time / fast_time:4.1f}x) | metrics: fast {fast_metric_time:6.3f} s, loop "
        f"{loop_metric_time:6.3f} s ({loop_metric_time / fast_metric_time:5.1f}x)"
    )
    print(
        f"{'':30s} R1 {fast['R1']:.4f} mAP {fast['mAP']:.4f} mINP {fast['mINP']:.4f} "
        f"| max |fast - loop| = {diff:.2e}"
    )
    return diff < 1e-9


def main(argv: List[str] | None = None) -> int:
    """Run both workloads; exit status 1 if the implementations disagree."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), {where}")
    plan, feats = sysu_workload(args, gen)
    feats = feats.to(device)
    n_gal = len(plan.tasks[0].galleries[0])
    ok = run(
        f"SYSU all-single {len(plan.tasks[0].query)}x{n_gal}x{args.trials}",
        plan,
        feats,
        args.repeats,
        args.loop_repeats,
    )
    plan, feats = regdb_workload(args, gen)
    feats = feats.to(device)
    ok &= run("RegDB v2i 2060x2060x1", plan, feats, args.repeats, args.loop_repeats)
    print("numbers identical" if ok else "MISMATCH between the implementations")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
