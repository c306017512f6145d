"""Benchmark CPCL's pseudo-labelling of one modality: per-stage times, the same-process float32
matrix product, the dense reference, cluster-contrast's public implementation, approximate kNN.

For each N, synthetic L2-normalised features (``N / 6`` identities, like CUHK-PEDES's 68k
captions of 11k persons) are clustered with k1=30, k2=6, DBSCAN(eps=0.6, min_samples=4); OPLM
then mines the outliers of a second, paired modality. Each N runs in a fresh process that
reports, for every stage (kNN, k-reciprocal expansion, Jaccard, DBSCAN, OPLM), the wall time and
the peak resident memory above the stage's start, the process peak, the time of one float32
``N x N x D`` product (torch ``mm``) measured in the same process and the pipeline's multiple of
it, and the load average before and after. Exactness is checked in the same run: the ranking of
the default (torch) kNN equals the faiss-candidate path (``--faiss-check-max``) and the labels
equal the dense reference (``--dense-max``); a mismatch is an error (exit code 3).

``--cluster-contrast PATH`` (a local checkout of github.com/alibaba/cluster-contrast-reid, never
vendored here) adds its ``compute_jaccard_distance`` (CPU faiss search) + scikit-learn
DBSCAN(eps, min_samples) on the same features: time, peak memory, speed-up, identical labels
and adjusted Rand index. ``--approx hnsw ivf`` adds the approximate kNN backends: time, memory,
ARI/NMI against the exact partition (``--no-exact``: approximate only, for 200k-1M samples).

Example (two cores; cluster-contrast checked out in ~/cluster-contrast-reid):
    export OMP_NUM_THREADS=2
    python tools/benchmark_cpcl_clustering.py --sizes 5000 10000 20000 --approx hnsw ivf \\
        --cluster-contrast ~/cluster-contrast-reid
    python tools/benchmark_cpcl_clustering.py --sizes 68000 --approx hnsw ivf --no-oplm
    python tools/benchmark_cpcl_clustering.py --sizes 200000 1000000 --no-exact --approx hnsw
    # OPLM's memory worst case: one giant guide cluster (5,000 outliers x 30,000 candidates)
    python tools/benchmark_cpcl_clustering.py --giant-oplm 5000 30000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import types
from contextlib import contextmanager
from typing import Dict, Iterator, List

import numpy as np

from fastreid_ext.utils.atomic_io import atomic_json_dump

STAGES = ("knn", "reciprocal_expansion", "jaccard", "dbscan", "oplm")
K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4


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


def load_cluster_contrast(path: str):
    """``compute_jaccard_distance`` from a local cluster-contrast checkout at ``path``, loaded
    without executing its package ``__init__`` files (they import the whole training stack)."""
    utils = os.path.join(path, "clustercontrast", "utils")
    if not os.path.isfile(os.path.join(utils, "faiss_rerank.py")):
        raise FileNotFoundError(
            f"--cluster-contrast {path}: no clustercontrast/utils/faiss_rerank.py there"
        )
    pkg = types.ModuleType("_cc_utils")
    pkg.__path__ = [utils]
    sys.modules["_cc_utils"] = pkg
    for name in ("faiss_utils", "faiss_rerank"):
        spec = importlib.util.spec_from_file_location(
            f"_cc_utils.{name}", os.path.join(utils, f"{name}.py")
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod.compute_jaccard_distance


def time_matmul(x: np.ndarray, max_bytes: int = 2**31) -> float:
    """Seconds of the float32 product ``x @ x.T`` (``[N, D] x [D, N]``, torch on the CPU): one
    ``mm`` when the ``[N, N]`` result fits in ``max_bytes``, else row blocks of that size
    written into one reused buffer (the same arithmetic)."""
    import torch

    xt = torch.from_numpy(x)
    n = len(x)
    rows = max(1, min(n, max_bytes // (4 * n)))
    out = torch.empty((rows, n), dtype=torch.float32)
    t = time.perf_counter()
    for s in range(0, n, rows):
        torch.mm(xt[s : s + rows], xt.t(), out=out[: min(rows, n - s)])
    elapsed = time.perf_counter() - t
    del out
    return elapsed


def exact_pipeline(x: np.ndarray, sampler: RssSampler, res: Dict[str, float]):
    """Ours, stage by stage (kNN with the default backend); returns ``(ranking, labels)``."""
    import scipy.sparse as sp

    from fastreid_ext.clustering import dbscan_labels, exact_knn
    from fastreid_ext.clustering.jaccard import (
        expansion_sets,
        expansion_weights,
        jaccard_radius_graph,
        query_expansion,
    )

    n = len(x)
    t_all = time.perf_counter()
    with sampler.window(res, "knn"):
        ranking = exact_knn(x, K1)
    with sampler.window(res, "reciprocal_expansion"):
        indptr, indices = expansion_sets(ranking)
        v = sp.csr_matrix((expansion_weights(x, indptr, indices), indices, indptr), shape=(n, n))
        vqe = query_expansion(v, ranking, K2)
    with sampler.window(res, "jaccard"):
        graph = jaccard_radius_graph(vqe, EPS)
    with sampler.window(res, "dbscan"):
        labels = dbscan_labels(graph, EPS, MIN_SAMPLES)
    res["sparse_total_s"] = time.perf_counter() - t_all
    res["radius_graph_nnz"] = int(graph.nnz)
    return ranking, labels


def run_single(n: int, args: argparse.Namespace) -> Dict[str, float]:
    """All measurements for one N (call in a fresh process)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from fastreid_ext.clustering import (
        cluster_pseudo_labels,
        dbscan_labels,
        exact_knn,
        jaccard_distance_dense,
        label_counts,
        outlier_pseudo_label_mining,
    )
    from fastreid_ext.clustering.knn import l2_normalize

    text, image, ids = synthetic_pairs(n, args.dim, args.seed)
    x = l2_normalize(text)
    sampler = RssSampler()
    base = sampler.current()
    res: Dict[str, float] = {"n": n, "load_before": os.getloadavg()[0]}
    if not args.no_exact:
        res["matmul_s"] = time_matmul(x)
    labels = None
    if not args.no_exact:
        ranking, labels = exact_pipeline(x, sampler, res)
        res["x_matmul"] = res["sparse_total_s"] / res["matmul_s"]
        if not args.no_oplm:
            # the paired modality's labels for OPLM (clustered by the same code, not timed above)
            image_labels = cluster_pseudo_labels(image, K1, K2, EPS, MIN_SAMPLES)
            with sampler.window(res, "oplm"):
                outlier_pseudo_label_mining(image_labels, labels, image, text, "one_stage")
        res["sparse_peak_mib"] = (sampler.peak - base) / 2**20
        res["clusters"], res["outliers"] = label_counts(labels)
        singles = np.where(labels < 0, -1 - np.arange(n), labels)
        res["nmi_true_ids"] = float(normalized_mutual_info_score(ids, singles))
        if n <= args.faiss_check_max:
            res["ranking_equals_faiss_path"] = bool(
                np.array_equal(exact_knn(x, K1, backend="faiss"), ranking)
            )
        del ranking
    if labels is not None and n <= args.dense_max:
        t, start = time.perf_counter(), sampler.current()
        sampler.peak = start
        dense_labels = dbscan_labels(jaccard_distance_dense(x, K1, K2), EPS, MIN_SAMPLES)
        res["dense_total_s"] = time.perf_counter() - t
        res["dense_peak_mib"] = (max(sampler.peak, sampler.current()) - start) / 2**20
        res["labels_equal_dense"] = bool(np.array_equal(dense_labels, labels))
    if labels is not None and args.cluster_contrast:
        run_cluster_contrast(x, labels, args.cluster_contrast, sampler, res)
    for backend in args.approx:
        approx = {}
        t, start = time.perf_counter(), sampler.current()
        sampler.peak = start
        got = cluster_pseudo_labels(
            x,
            K1,
            K2,
            EPS,
            MIN_SAMPLES,
            backend=backend,
            timings=approx,
            knn_ef=args.ef,
            knn_nprobe=args.nprobe,
        )
        res[f"{backend}_total_s"] = time.perf_counter() - t
        res[f"{backend}_knn_s"] = approx["knn"]
        res[f"{backend}_peak_mib"] = (max(sampler.peak, sampler.current()) - start) / 2**20
        res[f"{backend}_clusters"] = label_counts(got)[0]
        if labels is not None:
            res[f"{backend}_ari"] = float(adjusted_rand_score(labels, got))
            res[f"{backend}_nmi"] = float(normalized_mutual_info_score(labels, got))
    res["process_peak_mib"] = (sampler.peak - base) / 2**20
    res["load_after"] = os.getloadavg()[0]
    sampler.stop()
    return res


def run_cluster_contrast(
    x: np.ndarray, labels: np.ndarray, path: str, sampler: RssSampler, res: Dict[str, float]
) -> None:
    """cluster-contrast's ``compute_jaccard_distance`` (CPU search) + DBSCAN on ``x``."""
    import torch
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import adjusted_rand_score

    compute_jaccard_distance = load_cluster_contrast(path)
    t, start = time.perf_counter(), sampler.current()
    sampler.peak = start
    dist = compute_jaccard_distance(
        torch.from_numpy(x), k1=K1, k2=K2, print_flag=False, search_option=3
    )
    cc = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed").fit_predict(dist)
    res["cc_total_s"] = time.perf_counter() - t
    res["cc_peak_mib"] = (max(sampler.peak, sampler.current()) - start) / 2**20
    res["cc_speedup"] = res["cc_total_s"] / res["sparse_total_s"]
    res["labels_equal_cc"] = bool(np.array_equal(cc, labels))
    res["cc_ari"] = float(adjusted_rand_score(labels, cc))


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


def _cell(row: Dict[str, float], key: str, fmt: str) -> str:
    return "-" if key not in row else format(row[key], fmt)


def print_table(rows: List[Dict[str, float]], approx: List[str]) -> None:
    """Markdown tables: stages, comparisons, exactness checks."""
    tables = [
        [("N", "n", "d")]
        + [(f"{s} s / MiB", s, "stage") for s in STAGES]
        + [("total s", "sparse_total_s", ".2f"), ("peak MiB", "sparse_peak_mib", ".0f")]
        + [("clusters", "clusters", "d"), ("outliers", "outliers", "d")],
        [("N", "n", "d"), ("load", "load_before", ".1f"), ("matmul s", "matmul_s", ".2f")]
        + [("total / matmul", "x_matmul", ".2f"), ("cluster-contrast s", "cc_total_s", ".1f")]
        + [("cc MiB", "cc_peak_mib", ".0f"), ("speed-up vs cc", "cc_speedup", ".2f")]
        + [("same labels as cc", "labels_equal_cc", ""), ("ARI vs cc", "cc_ari", ".4f")]
        + [("dense s", "dense_total_s", ".1f"), ("same labels as dense", "labels_equal_dense", "")]
        + [("ranking = faiss path", "ranking_equals_faiss_path", "")],
    ]
    if approx:
        cols = [("N", "n", "d")]
        for b in approx:
            cols += [(f"{b} s", f"{b}_total_s", ".1f"), (f"{b} kNN s", f"{b}_knn_s", ".1f")]
            cols += [(f"{b} MiB", f"{b}_peak_mib", ".0f"), (f"{b} ARI", f"{b}_ari", ".4f")]
            cols += [(f"{b} NMI", f"{b}_nmi", ".4f")]
        tables.append(cols)
    for cols in tables:
        print("| " + " | ".join(c[0] for c in cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            cells = []
            for _, key, fmt in cols:
                if fmt == "stage":
                    cells.append(
                        "-"
                        if f"{key}_s" not in r
                        else f"{r[key + '_s']:.2f} / {r[key + '_mib']:.0f}"
                    )
                else:
                    cells.append(_cell(r, key, fmt))
            print("| " + " | ".join(cells) + " |")
        print()


def exactness_failures(row: Dict[str, float]) -> List[str]:
    """The exactness checks of ``row`` that failed."""
    keys = ("labels_equal_dense", "ranking_equals_faiss_path")
    return [k for k in keys if k in row and not row[k]]


def main(argv: List[str] | None = None) -> int:
    """Run every size in a subprocess and print the tables (and optionally save json)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--dense-max", type=int, default=10000, help="largest N for the dense run")
    p.add_argument(
        "--faiss-check-max",
        type=int,
        default=20000,
        help="largest N whose ranking is compared with the faiss-candidate path",
    )
    p.add_argument(
        "--cluster-contrast",
        default="",
        metavar="PATH",
        help="local checkout of cluster-contrast-reid: adds its Jaccard + DBSCAN column",
    )
    p.add_argument(
        "--approx", nargs="*", default=[], choices=["hnsw", "ivf"], help="approximate backends"
    )
    p.add_argument("--ef", type=int, default=128, help="HNSW efSearch of --approx hnsw")
    p.add_argument("--nprobe", type=int, default=128, help="IVF nprobe of --approx ivf")
    p.add_argument("--no-exact", action="store_true", help="skip the exact pipeline")
    p.add_argument(
        "--no-oplm", action="store_true", help="skip OPLM (and clustering the paired modality)"
    )
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
        res = run_single(args.single, args)
        print("RESULT " + json.dumps(res))
        return 0
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__] + (argv if argv is not None else sys.argv[1:])
        cmd += ["--single", str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        rows.append(json.loads(line[len("RESULT ") :]))
        print(f"N={n}: done", file=sys.stderr)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"OMP_NUM_THREADS={threads}, cpu_count={os.cpu_count()}\n")
    print_table(rows, args.approx)
    if args.json:
        atomic_json_dump(rows, args.json, indent=2)
    failed = {r["n"]: exactness_failures(r) for r in rows if exactness_failures(r)}
    if failed:
        print(f"EXACTNESS CHECK FAILED: {failed}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
