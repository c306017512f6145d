#!/usr/bin/env python
"""One-command GPU check: every method at real size (step time, peak memory, loss finite and
falling, trainer vs plain loop), text-to-image metrics and CPCL pseudo labels against the
matrix-product floor, fp16 and bf16 AMP; writes gpu_check.json and gpu_check.md.

    python tools/gpu_check.py                       # one GPU, <= 8 minutes
    OMP_NUM_THREADS=2 python tools/gpu_check.py --device cpu --tiny   # the CI check

See fastreid_ext/benchmark/gpu_check.py (``--help``) for what is measured.
"""

from fastreid_ext.benchmark.gpu_check import main

if __name__ == "__main__":
    main()
