#!/usr/bin/env python
"""Data loading per worker: caption pairs/s of the text-image pipeline at 384x128 and
visible-infrared pairs/s of CSDN's (two decodes, three resizes, CAJ) at 288x144, measured in one
process as one DataLoader worker runs them, and the workers a GPU step needs:

    workers = ceil(batch / (step time * items/s per worker))

for batch 64 (text-image) / 32 pairs (CSDN) and the step times given with --step-times (take
them from tools/gpu_check.py's table on your GPU).

    OMP_NUM_THREADS=1 python tools/benchmark_data_loading.py --items 200
"""

from __future__ import annotations

import argparse

import torch

from fastreid_ext.benchmark.data_loading import arithmetic_lines, data_loading_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=200, help="items timed per pipeline")
    p.add_argument("--src-t2i", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    p.add_argument("--src-vi", type=int, nargs=2, default=[288, 144], metavar=("H", "W"))
    p.add_argument("--step-times", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    args = p.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs one thread
    report = data_loading_report(args.items, args.src_t2i, args.src_vi)
    print(f"load average {report['load_average'][0]:.1f}, 1 thread per worker")
    print("\n".join(arithmetic_lines(report, args.step_times)))


if __name__ == "__main__":
    main()
