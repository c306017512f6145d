#!/usr/bin/env python3
"""Write a synthetic text-image ReID dataset in CUHK-PEDES / ICFG-PEDES / RSTPReid format.

The same command as the installed console script ``fastreid-ext-make-synthetic-data``; the code lives in
:mod:`fastreid_ext.tools.make_synthetic_data` (``--help`` lists the options).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.make_synthetic_data import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
