"""Encode a gallery with a trained model and write a searchable index folder.

Installed as ``fastreid-ext-extract-features``; in a checkout ``python tools/extract_features.py``
runs the same command. The gallery is a split of any registered dataset (``--dataset NAME
--split test``) or every image under a folder (``--images DIR``, recursively). The output folder
holds ``index.faiss`` (the features, in a faiss inner-product index), ``rows.json`` (image path,
and identity / camera / modality when known, per row) and ``meta.json`` (config, weights,
fingerprint, index kind and parameters). Load it with
``fastreid_ext.inference.GalleryIndex.load(DIR)``.

Examples (the demo's checkpoints, after ``bash scripts/run_demo.sh``):
    fastreid-ext-extract-features --config-file configs/Baseline/demo.yml \\
        --weights output/demo/baseline/model_final.pth --dataset CUHKPEDES --split test \\
        --output output/demo/baseline/gallery_test
    fastreid-ext-extract-features --config-file configs/CSDN/demo.yml \\
        --weights output/demo/csdn/model_final.pth --images datasets/demo_vi/SYSU-MM01/cam1 \\
        --modality visible --kind hnsw --output output/demo/csdn/gallery_cam1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

__all__ = ["main", "parse_args"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (trailing ``KEY VALUE`` pairs are config overrides)."""
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or "fastreid-ext-extract-features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config-file", required=True, help="the training config (path or name)")
    p.add_argument("--weights", help="the trained checkpoint (default: MODEL.WEIGHTS)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered dataset, e.g. CUHKPEDES, SYSUMM01CrossModal")
    src.add_argument("--images", metavar="DIR", help="a folder of images (searched recursively)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--root", help="folder holding the dataset (default: DATASETS.ROOT)")
    p.add_argument("--output", required=True, metavar="DIR", help="index folder to write")
    p.add_argument("--kind", default="flat", choices=("flat", "ivf", "hnsw"), help="index type")
    p.add_argument("--nlist", type=int, help="IVF lists (default 4*sqrt(N))")
    p.add_argument("--nprobe", type=int, help="IVF lists scanned per query (default 64)")
    p.add_argument("--hnsw-m", type=int, help="HNSW links per node (default 32)")
    p.add_argument("--ef-construction", type=int, help="HNSW build beam (default 80)")
    p.add_argument("--ef-search", type=int, help="HNSW search beam (default 128)")
    p.add_argument("--modality", choices=("visible", "infrared"), help="CSDN with --images")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA (default: autocast)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, help="image loader processes (default: config)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def _summary(index, output: str, seconds: float) -> str:
    m = index.meta
    return "\n".join(
        [
            f"images:      {len(index)} ({m['source']})",
            f"model:       {m['method']} ({m['task']}), fingerprint {m['fingerprint']}",
            f"features:    dim {index.dim}, encoded in {m['encode_seconds']:.1f} s "
            f"({m['images_per_second']:.1f} images/s on {m['device']})",
            f"index:       {index.kind} {m['params']}",
            f"total time:  {seconds:.1f} s",
            f"written to:  {os.path.abspath(output)}",
        ]
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the index and print a summary; exit code 2 for bad input (message on stderr)."""
    args = parse_args(argv)
    from fastreid.utils.logger import setup_logger

    from fastreid_ext.config import ConfigValueError
    from fastreid_ext.inference import IndexFolderError, Predictor, build_gallery_index

    setup_logger(name="fastreid_ext")
    logging.getLogger("fastreid_ext").setLevel(logging.INFO)
    params = {
        k: v
        for k, v in dict(
            nlist=args.nlist,
            nprobe=args.nprobe,
            hnsw_m=args.hnsw_m,
            ef_construction=args.ef_construction,
            ef_search=args.ef_search,
        ).items()
        if v is not None
    }
    start = time.perf_counter()
    try:
        predictor = Predictor.from_config(
            args.config_file,
            args.weights,
            args.opts,
            device=args.device,
            amp=False if args.no_amp else None,
        )
        index = build_gallery_index(
            predictor,
            args.images,
            dataset=args.dataset,
            split=args.split,
            root=args.root,
            kind=args.kind,
            modality=args.modality,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            **params,
        )
        index.save(args.output)
    except (
        FileNotFoundError,
        KeyError,
        TypeError,
        ValueError,
        ConfigValueError,
        IndexFolderError,
    ) as exc:
        sys.stderr.write(f"extract_features: error: {exc}\n")
        return 2
    print(_summary(index, args.output, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
