"""Benchmark CPCL's pseudo-labelling of one modality: sparse vs dense k-reciprocal Jaccard + DBSCAN.

For each N, synthetic L2-normalised features (``N / 6`` identities, like CUHK-PEDES's 68k
captions of 11k persons) are clustered with k1=30, k2=6, DBSCAN(eps=0.6, min_samples=4); OPLM
then mines the outliers of a second, paired modality. Each N runs in a fresh process; for every
stage (kNN, k-reciprocal expansion, Jaccard, DBSCAN, OPLM) the wall time and the peak resident
memory above the stage's start are reported, plus the process peak. Where the dense reference
fits (``--dense-max``), it runs on the same features and the labels are compared.

Example (two cores):
    OMP_NUM_THREADS=2 python tools/benchmark_cpcl_clustering.py --sizes 10000 20000 40000 68000
    # OPLM's memory worst case: one giant guide cluster (5,000 outliers x 30,000 candidates)
    OMP_NUM_THREADS=1 python tools/benchmark_cpcl_clustering.py --giant-oplm 5000 30000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List

import numpy as np

STAGES = ("knn", "reciprocal_expansion", "jaccard", "dbscan", "oplm")


class RssSampler:
    """Samples this process's resident memory every few milliseconds (Linux /proc)."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s = period_s
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.period_s)

    @contextmanager
    def window(self, out: Dict[str, float], name: str) -> Iterator[None]:
        """Record seconds and peak RSS above the start (MiB) of the enclosed block."""
        start_rss = self.current()
        self.peak = start_rss
        t = time.perf_counter()
        yield
        out[f"{name}_s"] = time.perf_counter() - t
        self.peak = max(self.peak, self.current())
        out[f"{name}_mib"] = (self.peak - start_rss) / 2**20

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_pairs(n: int, dim: int, seed: int, per_id: int = 6):
    """Paired image/text features ``[N, D]`` of ``N / per_id`` identities and the true ids."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) // per_id
    rng.shuffle(ids)
    num = int(ids.max()) + 1
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)

    def modality(spread: float) -> np.ndarray:
        centers = rng.standard_normal((num, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        x = 0.6 * common + centers[ids]
        x += spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return modality(1.6), modality(1.8), ids


def run_single(n: int, dim: int, dense_max: int, seed: int) -> Dict[str, float]:
    """All measurements for one N (call in a fresh process)."""
    from sklearn.metrics import normalized_mutual_info_score

    from fastreid_ext.clustering import (
        dbscan_labels,
        jaccard_distance_dense,
        k_reciprocal_jaccard,
        label_counts,
        outlier_pseudo_label_mining,
    )
    from fastreid_ext.clustering.jaccard import (
        expansion_sets,
        expansion_weights,
        jaccard_radius_graph,
        query_expansion,
    )
    from fastreid_ext.clustering.knn import exact_knn, l2_normalize

    text, image, ids = synthetic_pairs(n, dim, seed)
    sampler = RssSampler()
    base = sampler.current()
    res: Dict[str, float] = {"n": n}
    import scipy.sparse as sp

    t_all = time.perf_counter()
    with sampler.window(res, "knn"):
        x = l2_normalize(text)
        ranking = exact_knn(x, 30)
    with sampler.window(res, "reciprocal_expansion"):
        indptr, indices = expansion_sets(ranking)
        v = sp.csr_matrix((expansion_weights(x, indptr, indices), indices, indptr), shape=(n, n))
        vqe = query_expansion(v, ranking, 6)
    with sampler.window(res, "jaccard"):
        graph = jaccard_radius_graph(vqe, 0.6)
    with sampler.window(res, "dbscan"):
        labels = dbscan_labels(graph, 0.6, 4)
    res["sparse_total_s"] = time.perf_counter() - t_all
    # the paired modality's labels for OPLM (clustered by the same code, not timed above)
    image_labels = dbscan_labels(k_reciprocal_jaccard(image, 30, 6, max_distance=0.6), 0.6, 4)
    with sampler.window(res, "oplm"):
        outlier_pseudo_label_mining(image_labels, labels, image, text, "one_stage")
    res["sparse_peak_mib"] = (sampler.peak - base) / 2**20
    res["clusters"], res["outliers"] = label_counts(labels)
    singles = np.where(labels < 0, -1 - np.arange(n), labels)
    res["nmi"] = float(normalized_mutual_info_score(ids, singles))
    res["radius_graph_nnz"] = int(graph.nnz)
    del graph, vqe, v

    if n <= dense_max:
        t = time.perf_counter()
        sampler.peak = sampler.current()
        start = sampler.current()
        dist = jaccard_distance_dense(text, 30, 6)
        dense_labels = dbscan_labels(dist, 0.6, 4)
        res["dense_total_s"] = time.perf_counter() - t
        sampler.peak = max(sampler.peak, sampler.current())
        res["dense_peak_mib"] = (sampler.peak - start) / 2**20
        res["labels_identical"] = bool(np.array_equal(dense_labels, labels))
        res["speedup"] = res["dense_total_s"] / res["sparse_total_s"]
    sampler.stop()
    return res


def run_giant_oplm(outliers: int, candidates: int, dim: int, seed: int) -> Dict[str, float]:
    """OPLM with one giant guide cluster pairing ``outliers`` outliers with ``candidates``
    clustered samples (``outliers * candidates`` pairs: the memory worst case)."""
    from fastreid_ext.clustering import mine_outliers

    rng = np.random.default_rng(seed)
    n = outliers + candidates
    x = rng.standard_normal((n, dim), dtype=np.float32)
    guide = np.zeros(n, dtype=np.int64)
    target = rng.integers(0, max(candidates // 6, 1), n)
    target[:outliers] = -1
    sampler = RssSampler()
    res: Dict[str, float] = {"outliers": outliers, "candidates": candidates}
    with sampler.window(res, "oplm"):
        out = mine_outliers(target, guide, x)
    sampler.stop()
    res["assigned"] = int((out[:outliers] >= 0).sum())
    return res


def print_table(rows: List[Dict[str, float]]) -> None:
    """Human-readable summary."""
    head = ["N"] + [f"{s} s/MiB" for s in STAGES] + ["sparse s", "peak MiB", "clusters/outl", "NMI"]
    head += ["dense s", "dense MiB", "speed-up", "same labels"]
    print(" | ".join(head))
    for r in rows:
        cells = [str(r["n"])]
        cells += [f"{r[s + '_s']:.2f}/{r[s + '_mib']:.0f}" for s in STAGES]
        cells += [f"{r['sparse_total_s']:.2f}", f"{r['sparse_peak_mib']:.0f}"]
        cells += [f"{r['clusters']}/{r['outliers']}", f"{r['nmi']:.4f}"]
        if "dense_total_s" in r:
            cells += [
                f"{r['dense_total_s']:.1f}",
                f"{r['dense_peak_mib']:.0f}",
                f"{r['speedup']:.1f}x",
                str(r["labels_identical"]),
            ]
        else:
            cells += ["-", "-", "-", "-"]
        print(" | ".join(cells))


def main(argv: List[str] | None = None) -> int:
    """Run every size in a subprocess and print the table (and optionally save json)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 40000, 68000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--dense-max", type=int, default=20000, help="largest N for the dense run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write the measurements to this file")
    p.add_argument(
        "--giant-oplm",
        type=int,
        nargs=2,
        metavar=("OUTLIERS", "CANDIDATES"),
        help="instead: time OPLM on one guide cluster of this many outliers x candidates",
    )
    p.add_argument("--single", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.giant_oplm:
        res = run_giant_oplm(*args.giant_oplm, args.dim, args.seed)
        print(
            f"OPLM, {res['outliers']} outliers x {res['candidates']} candidates in one guide "
            f"cluster: {res['oplm_s']:.2f} s, peak {res['oplm_mib']:.0f} MiB above the start, "
            f"{res['assigned']} assigned"
        )
        return 0
    if args.single:
        res = run_single(args.single, args.dim, args.dense_max, args.seed)
        print("RESULT " + json.dumps(res))
        return 0
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--single", str(n), "--dim", str(args.dim)]
        cmd += ["--dense-max", str(args.dense_max), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        rows.append(json.loads(line[len("RESULT ") :]))
        print(f"N={n}: done", file=sys.stderr)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"OMP_NUM_THREADS={threads}, cpu_count={os.cpu_count()}")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
