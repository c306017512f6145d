"""Search a gallery index with free-text queries (or query images, visible-infrared models):
``fastreid-ext-search --index DIR "a woman in a red coat"`` (or ``python tools/search.py``).

Prints each query's top-k as a table (rank, score, pid when known, correct when the query's
identity is known, path); ``--json`` writes every result, ``--grid`` / ``--grid-dir`` draw them.
Exit status: 0 on success, 2 for bad input (missing index, files, a model whose fingerprint is not
the index's, a query kind the index does not take).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

from fastreid_ext.search import (
    QueryError,
    SearchResult,
    format_table,
    image_queries,
    read_queries_file,
    results_to_json,
    save_grid,
    save_grids,
    split_queries,
    text_queries,
)
from fastreid_ext.search.cli_args import OPEN_ERRORS, add_index_arguments, open_searcher
from fastreid_ext.search.queries import MODALITIES

__all__ = ["build_parser", "main"]

EXAMPLES = """examples (on the demo's output, see README):
  %(prog)s --index output/demo/baseline/gallery_test "a man in a blue shirt and black pants"
  %(prog)s --index output/demo/baseline/gallery_test --from-split --num-queries 3 \\
      --topk 5 --json output/demo/baseline/search.json --grid output/demo/baseline/search.png
  %(prog)s --index output/demo/csdn/gallery_test --query-image q.jpg --modality infrared
queries file: one caption per line, or "pid<TAB>caption" to mark results correct / wrong.
"""


def build_parser(prog: str = "fastreid-ext-search") -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Search a gallery index (tools/extract_features.py) with captions or query "
        "images; print, save (JSON) and draw (PNG grid) the top-k.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("queries", nargs="*", metavar="QUERY", help="caption(s) to search for")
    add_index_arguments(parser, positional_queries=True)
    q = parser.add_argument_group("queries (any combination of one kind)")
    q.add_argument("--queries-file", metavar="FILE", help="captions, one per line")
    q.add_argument(
        "--from-split",
        nargs="?",
        const="",
        metavar="SPLIT",
        help="queries with their identities from the dataset the index was built from: its "
        "captions (text-image) or query images (visible-infrared); SPLIT defaults to the index's",
    )
    q.add_argument(
        "--num-queries",
        type=int,
        default=5,
        metavar="N",
        help="with --from-split: N queries spread evenly over the split, 0 for all (default 5)",
    )
    q.add_argument("--query-image", nargs="+", metavar="PATH", help="query image file(s)")
    q.add_argument("--modality", choices=MODALITIES, help="modality of --query-image")
    q.add_argument(
        "--query-pid",
        type=int,
        metavar="PID",
        help="identity shown by the command-line queries (marks results correct / wrong)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--topk", type=int, default=10, metavar="K", help="results per query (10)")
    out.add_argument("--json", metavar="OUT", help="write all results to this JSON file")
    out.add_argument("--grid", metavar="OUT.png", help="one image: every query's grid, stacked")
    out.add_argument("--grid-dir", metavar="DIR", help="one grid image per query in DIR")
    return parser


def _collect_queries(args: argparse.Namespace, searcher) -> list:
    queries = text_queries(args.queries, args.query_pid)
    if args.queries_file:
        queries += read_queries_file(args.queries_file)
    if args.query_image:
        queries += image_queries(args.query_image, args.modality, args.query_pid)
    if args.from_split is not None:
        source = searcher.index.meta.get("source")
        queries += split_queries(
            searcher.predictor.cfg, source or {}, args.from_split or None, args.num_queries
        )
    if not queries:
        raise QueryError("no query: give captions, --queries-file, --query-image or --from-split")
    return queries


def _summary(results: Sequence[SearchResult]) -> Optional[str]:
    known = [r for r in results if r.has_ground_truth]
    if not known:
        return None
    top1 = sum(r.hits[0].correct for r in known)
    anyk = sum(any(h.correct for h in r.hits) for r in known)
    k = max(len(r.hits) for r in known)
    return (
        f"{len(known)} queries with known identity: correct at rank 1 {top1}/{len(known)}, "
        f"within the top {k} {anyk}/{len(known)}"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the search of ``argv`` (default ``sys.argv[1:]``); see the module docstring."""
    prog = os.path.basename(sys.argv[0]) or "fastreid-ext-search"
    parser = build_parser(prog)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.topk < 1:
        parser.error(f"--topk must be at least 1, got {args.topk}")
    if args.num_queries < 0:
        parser.error(f"--num-queries must be 0 (all) or more, got {args.num_queries}")
    if bool(args.query_image) != bool(args.modality):
        parser.error("--query-image and --modality (visible or infrared) go together")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        searcher = open_searcher(args)
        queries = _collect_queries(args, searcher)
        results = searcher.search(queries, args.topk, progress=len(queries) > 256)
    except (QueryError, *OPEN_ERRORS) as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    blocks: List[str] = [format_table(r) for r in results]
    summary = _summary(results)
    print("\n\n".join(blocks + ([summary] if summary else [])))
    info = {**searcher.info(), "topk": args.topk}
    if args.json:
        results_to_json(results, info, args.json)
        print(f"results: {args.json}")
    if args.grid:
        save_grid(results, args.grid)
        print(f"grid: {args.grid}")
    if args.grid_dir:
        paths = save_grids(results, args.grid_dir)
        print(f"grids: {len(paths)} files in {args.grid_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
