#!/usr/bin/env python3
"""Print one results table for several runs: ``summarize_results.py CONFIG [CONFIG ...]``.

Reads ``OUTPUT_DIR/results.json`` (written by ``tools/train_net.py``) of each config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tabulate import tabulate

from fastreid_ext.engine import build_cfg

KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="+")
    args = parser.parse_args(argv)
    rows, missing = [], []
    for path in args.configs:
        cfg = build_cfg(path)
        result_file = os.path.join(cfg.OUTPUT_DIR, "results.json")
        if not os.path.isfile(result_file):
            missing.append(result_file)
            continue
        with open(result_file) as f:
            res = json.load(f)
        flat = res if "R1" in res else next(iter(res.values()))
        rows.append([path, cfg.MODEL.META_ARCHITECTURE] + [flat.get(k, float("nan")) for k in KEYS])
    if rows:
        print(
            tabulate(rows, headers=["config", "method", *KEYS], floatfmt=".2f", tablefmt="github")
        )
    for m in missing:
        print(f"missing results: {m}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
