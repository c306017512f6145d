#!/usr/bin/env python3
"""Gallery index benchmark: build time, query latency and recall@10 of the exact and the
approximate faiss indexes of ``fastreid_ext.inference`` on clustered synthetic features.

Features: :func:`fastreid_ext.inference.synthetic.clustered_gallery` (512-d unit vectors; groups
of 500 images, identities of about 5 images; queries are new images of gallery identities), so a
query's top 10 are its identity's images and then near-tied images of its group. For each size
and index kind (built by :func:`fastreid_ext.inference.build_faiss_index` with its defaults
unless ``--nprobe`` / ``--ef-search`` ... are given) the script reports:

* build: seconds to build the index (IVF: quantizer training + adding; HNSW: graph insertion);
* latency: milliseconds per query for one query at a time (median and 95th percentile over
  ``--single-queries`` queries) and per query in one batch of ``--queries`` queries;
* recall@10: mean over the queries of |approximate top 10 ∩ exact top 10| / 10 (the exact top 10
  is the flat index's).

The default run (10k, 100k, 1M; flat, IVF, HNSW; two threads) needs about 7 GB of memory: one
index at a time beside the 2 GB of 1M features. Target: recall@10 >= 0.95 with under 20 ms per
query at 1M on two CPU cores.

Examples:
    OMP_NUM_THREADS=2 python tools/benchmark_index.py
    python tools/benchmark_index.py --sizes 10000 100000 --kinds flat ivf --nprobe 32
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any, Dict, List

import faiss
import numpy as np

from fastreid_ext.inference import build_faiss_index
from fastreid_ext.inference.synthetic import clustered_gallery


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000, help="queries of the batched search")
    p.add_argument("--single-queries", type=int, default=200, help="queries timed one by one")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="faiss threads")
    p.add_argument("--nlist", type=int, help="IVF lists (default 4*sqrt(N))")
    p.add_argument("--nprobe", type=int, help="IVF lists scanned per query")
    p.add_argument("--hnsw-m", type=int, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, help="HNSW build beam")
    p.add_argument("--ef-search", type=int, help="HNSW search beam")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows to this JSON file")
    return p.parse_args(argv)


def _latency_ms(index: faiss.Index, queries: np.ndarray, k: int) -> Dict[str, float]:
    """Per-query milliseconds: one at a time (median, p95) and in one batch."""
    index.search(queries[:1], k)  # warm-up
    times = []
    for i in range(queries.shape[0]):
        start = time.perf_counter()
        index.search(queries[i : i + 1], k)
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "single_ms_median": float(np.median(times)),
        "single_ms_p95": float(np.percentile(times, 95)),
    }


def _batched(index: faiss.Index, queries: np.ndarray, k: int) -> tuple:
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    return ids, (time.perf_counter() - start) * 1e3 / queries.shape[0]


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) / exact.shape[1]


def run_size(n: int, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Every kind at gallery size ``n`` (the flat index first: it gives the exact top k)."""
    start = time.perf_counter()
    gallery, _, queries, _ = clustered_gallery(n, args.dim, args.queries, seed=args.seed)
    print(f"[{n}] features generated in {time.perf_counter() - start:.1f} s", flush=True)
    params = {
        "ivf": {"nlist": args.nlist, "nprobe": args.nprobe},
        "hnsw": {
            "hnsw_m": args.hnsw_m,
            "ef_construction": args.ef_construction,
            "ef_search": args.ef_search,
        },
    }
    kinds = ["flat"] + [k for k in args.kinds if k != "flat"]
    rows, exact = [], None
    single = queries[: args.single_queries]
    for kind in kinds:
        given = {k: v for k, v in params.get(kind, {}).items() if v is not None}
        index, info = build_faiss_index(gallery, kind, seed=args.seed, show_progress=False, **given)
        ids, batched_ms = _batched(index, queries, args.k)
        row = {"size": n, "kind": kind, "build_s": info["build_seconds"], "batched_ms": batched_ms}
        row.update(_latency_ms(index, single, args.k))
        row["params"] = {k: v for k, v in info.items() if k != "build_seconds"}
        if kind == "flat":
            exact = ids
        row["recall@10"] = _recall(ids, exact) if exact is not None else float("nan")
        rows.append(row)
        print(_format([row], header=False), flush=True)
        del index
        gc.collect()
    return rows


def _format(rows: List[Dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| size | kind | params | build (s) | ms/query, batch of 1 (median / p95) "
            "| ms/query, batched | recall@10 |",
            "|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(
            f"| {r['size']:,} | {r['kind']} | {params} | {r['build_s']:.1f} | "
            f"{r['single_ms_median']:.2f} / {r['single_ms_p95']:.2f} | {r['batched_ms']:.3f} | "
            f"{r['recall@10']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = [k for k in args.kinds if k not in ("flat", "ivf", "hnsw")]
    if unknown:
        sys.exit(f"--kinds: unknown {unknown}; choose from flat, ivf, hnsw")
    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {args.threads} threads, dim {args.dim}, k {args.k}")
    rows: List[Dict[str, Any]] = []
    for n in args.sizes:
        rows += run_size(n, args)
    print("\n" + _format(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
