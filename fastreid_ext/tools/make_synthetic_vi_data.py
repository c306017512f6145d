"""Write a synthetic visible-infrared ReID dataset in the real SYSU-MM01 or RegDB layout.

Installed as ``fastreid-ext-make-synthetic-vi-data``; in a checkout ``python tools/make_synthetic_vi_data.py``
runs the same command.

Examples:
    fastreid-ext-make-synthetic-vi-data --format sysu --root datasets/demo_vi --num-ids 180 \
        --images-per-camera 4 --height 64 --width 32
    fastreid-ext-make-synthetic-vi-data --format regdb --root datasets/demo_vi --num-ids 60
"""

from __future__ import annotations

import argparse
import sys
import time

from fastreid_ext.data.vi.synthetic import (
    sysu_split_counts,
    write_synthetic_regdb,
    write_synthetic_sysu,
)

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--format", required=True, choices=["sysu", "regdb"], help="on-disk layout")
    p.add_argument("--root", required=True, help="folder receiving SYSU-MM01/ or RegDB/")
    p.add_argument("--num-ids", type=int, default=None, help="identities (sysu 120, regdb 40)")
    p.add_argument("--images-per-camera", type=int, default=4, help="sysu: per identity/camera")
    p.add_argument("--images-per-modality", type=int, default=10, help="regdb: per identity")
    p.add_argument("--camera-probability", type=float, default=0.75, help="sysu: camera presence")
    p.add_argument(
        "--split-counts",
        type=int,
        nargs=3,
        default=None,
        metavar=("TRAIN", "VAL", "TEST"),
        help="sysu identities per split (default: the release's 296/99/96 proportions)",
    )
    p.add_argument("--trials", type=int, default=10, help="regdb: number of idx splits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the dataset and print where it was written."""
    args = parse_args(argv)
    size = (args.height, args.width)
    start = time.perf_counter()
    try:
        if args.format == "sysu":
            num_ids = args.num_ids or 120
            counts = sysu_split_counts(num_ids, args.split_counts)
            out = write_synthetic_sysu(
                args.root,
                num_ids=num_ids,
                images_per_camera=args.images_per_camera,
                seed=args.seed,
                image_size=size,
                split_counts=counts,
                camera_probability=args.camera_probability,
                overwrite=args.overwrite,
            )
            summary = f"train {counts[0]}, val {counts[1]}, test {counts[2]} identities"
        else:
            num_ids = args.num_ids or 40
            out = write_synthetic_regdb(
                args.root,
                num_ids=num_ids,
                images_per_modality=args.images_per_modality,
                num_trials=args.trials,
                seed=args.seed,
                image_size=size,
                overwrite=args.overwrite,
            )
            summary = f"{num_ids} identities, {args.trials} trials"
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({summary}) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
