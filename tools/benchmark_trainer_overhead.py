#!/usr/bin/env python
"""Trainer overhead: throughput of the trainer's per-iteration path (StepRunner with AMP off,
IterationTimer, LR schedule hook, console / metrics.json / TensorBoard writers) against a plain
PyTorch loop over the same tiny model, data and optimizer, per method, on CPU. The two loops
alternate in blocks on the same model (``--rounds``), so both see the same machine load; the
ratio is plain time / trainer time (target >= 0.95).

    OMP_NUM_THREADS=2 python tools/benchmark_trainer_overhead.py --threads 2
"""

from __future__ import annotations

import argparse

import torch

from fastreid_ext.benchmark.methods import METHODS
from fastreid_ext.benchmark.overhead import overhead_table, trainer_overhead


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=10, help="steps per block and loop")
    p.add_argument("--rounds", type=int, default=4, help="blocks per loop (alternating)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = trainer_overhead(args.methods, args.steps, args.rounds)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, AMP off")
    print(overhead_table(rows))


if __name__ == "__main__":
    main()
