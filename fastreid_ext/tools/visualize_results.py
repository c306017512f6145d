"""Draw a finished run's retrieval grids, worst-queries page and training curves.

Installed as ``fastreid-ext-visualize-results``; in a checkout ``python tools/visualize_results.py``
runs the same command. It reads each RUN folder (a training or --eval-only OUTPUT_DIR, or the
OUTPUT_DIR of a config file given instead):

* every ``ranking_*.jsonl`` (written when the run had ``TEST.T2I.SAVE_RANKING_TOPK K`` or
  ``TEST.VI.SAVE_RANKING_TOPK K``): ``<output>/<name>/grids/query_*.png`` for --num-queries
  queries spread over the file, and ``<output>/<name>/worst_queries.html`` +
  ``worst_queries.png`` for the --worst queries with the lowest AP (correct gallery items have a
  green border, wrong ones a red border);
* ``metrics.json``: ``training_curves.png`` (loss terms per iteration, R1/mAP per evaluation),
  in RUN unless --output is given.

Examples:
    python tools/train_net.py --config-file configs/Baseline/demo.yml TEST.T2I.SAVE_RANKING_TOPK 10
    fastreid-ext-visualize-results output/demo/baseline
    fastreid-ext-visualize-results configs/Baseline/demo.yml configs/CSDN/demo.yml
    fastreid-ext-visualize-results output/demo/csdn --topk 5 --worst 10 --output /tmp/csdn_vis
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "parse_args"]


def _positive(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a run's OUTPUT_DIR, or a config file (its OUTPUT_DIR is used)",
    )
    p.add_argument("--topk", type=_positive, default=10, help="gallery items per grid (10)")
    p.add_argument(
        "--num-queries", type=_positive, default=10, help="queries drawn per ranking file (10)"
    )
    p.add_argument("--worst", type=_positive, default=20, help="queries on the worst page (20)")
    p.add_argument(
        "--output",
        default="",
        help="folder for everything written (one sub-folder per run when several are given; "
        "default: RUN/visualization, and RUN/training_curves.png)",
    )
    p.add_argument(
        "--cell-size",
        type=int,
        nargs=2,
        default=(128, 64),
        metavar=("H", "W"),
        help="size of each image in the grids (128 64)",
    )
    args = p.parse_args(argv)
    if args.topk < 1:
        p.error("--topk must be >= 1")
    return args


def _run_dir(run: str) -> str:
    """``run`` itself, or the ``OUTPUT_DIR`` of a config file (``.yml`` / ``fastreid_ext://``)."""
    if os.path.isdir(run) or not (run.endswith((".yml", ".yaml")) or "://" in run):
        return run
    from fastreid_ext.engine.setup import build_cfg

    return build_cfg(run).OUTPUT_DIR


def _visualize_run(run_dir: str, out_root: str, curves_path: str, args) -> bool:
    """Draw one run; prints what it wrote. Returns False on an error."""
    from fastreid_ext.evaluation.rankings import RankingFileError
    from fastreid_ext.visualization.curves import write_training_curves
    from fastreid_ext.visualization.report import find_ranking_files, visualize_ranking

    try:
        ranking_files = find_ranking_files(run_dir)
        for path in ranking_files:
            name = os.path.basename(path)[len("ranking_") : -len(".jsonl")]
            rep = visualize_ranking(
                path,
                os.path.join(out_root, name),
                topk=args.topk,
                num_queries=args.num_queries,
                worst=args.worst,
                cell_size=tuple(args.cell_size),
            )
            grid_dir = os.path.join(out_root, name, "grids")
            print(f"{name} ({rep.kind}): {len(rep.grids)} query grids in {grid_dir}")
            if rep.worst_html:
                print(f"{name}: worst queries page {rep.worst_html}, sheet {rep.worst_png}")
            if rep.skipped:
                print(f"{name}: worst queries page skipped: {rep.skipped}")
        if not ranking_files:
            print(
                f"no ranking_*.jsonl in {run_dir}: evaluate with TEST.T2I.SAVE_RANKING_TOPK K "
                "(text-image) or TEST.VI.SAVE_RANKING_TOPK K (visible-infrared) for grids"
            )
        if os.path.isfile(os.path.join(run_dir, "metrics.json")):
            os.makedirs(os.path.dirname(os.path.abspath(curves_path)), exist_ok=True)
            print(f"training curves: {write_training_curves(run_dir, curves_path)}")
        else:
            print(f"no metrics.json in {run_dir}: no training curves (an --eval-only run?)")
    except (FileNotFoundError, RankingFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Draw every run and print where it wrote things; 1 if any run failed."""
    args = parse_args(argv)
    from fastreid_ext.visualization.curves import CURVES_FILE

    ok = True
    for run in args.runs:
        run_dir = _run_dir(run)
        if args.output:
            out_root = args.output
            if len(args.runs) > 1:
                out_root = os.path.join(out_root, os.path.basename(os.path.normpath(run_dir)))
            curves_path = os.path.join(out_root, CURVES_FILE)
        else:
            out_root = os.path.join(run_dir, "visualization")
            curves_path = os.path.join(run_dir, CURVES_FILE)
        print(f"== {run_dir}")
        ok = _visualize_run(run_dir, out_root, curves_path, args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
