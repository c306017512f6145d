"""Write a synthetic text-image ReID dataset in CUHK-PEDES / ICFG-PEDES / RSTPReid format.

Installed as ``fastreid-ext-make-synthetic-data``; in a checkout ``python tools/make_synthetic_data.py``
runs the same command.

Example:
    fastreid-ext-make-synthetic-data --format cuhk --root datasets_synth --num-ids 300 \
        --images-per-id 4 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time

from fastreid_ext.data.synthetic import split_identity_counts, write_synthetic_dataset
from fastreid_ext.data.synthetic.writers import FORMATS

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="on-disk format")
    p.add_argument("--root", required=True, help="folder receiving the dataset folder")
    p.add_argument("--num-ids", type=int, default=300, help="number of identities")
    p.add_argument("--images-per-id", type=int, default=4)
    p.add_argument(
        "--captions-per-image", type=int, default=None, help="default: cuhk 2, icfg 1, rstp 2"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=48)
    p.add_argument(
        "--split-counts",
        type=int,
        nargs=3,
        default=None,
        metavar=("TRAIN", "VAL", "TEST"),
        help="identities per split (default: 80/10/10 %%, icfg 75/0/25 %%)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing imgs/ and json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the dataset and print where it was written with its counts."""
    args = parse_args(argv)
    counts = tuple(args.split_counts) if args.split_counts else None
    try:
        n_train, n_val, n_test = split_identity_counts(
            args.num_ids, args.format, split_counts=counts
        )
        start = time.perf_counter()
        out = write_synthetic_dataset(
            args.root,
            args.format,
            num_ids=args.num_ids,
            images_per_id=args.images_per_id,
            captions_per_image=args.captions_per_image,
            seed=args.seed,
            image_size=(args.height, args.width),
            split_counts=counts,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cpi = args.captions_per_image or FORMATS[args.format].captions_per_image
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if name == "val" and not FORMATS[args.format].has_val:
            continue
        images = n * args.images_per_id
        print(f"  {name:5s}: {n} ids, {images} images, {images * cpi} captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
