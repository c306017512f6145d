#!/usr/bin/env python3
"""Write a synthetic visible-infrared ReID dataset in the real SYSU-MM01 or RegDB layout.

The same command as the installed console script ``fastreid-ext-make-synthetic-vi-data``; the code lives in
:mod:`fastreid_ext.tools.make_synthetic_vi_data` (``--help`` lists the options).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.make_synthetic_vi_data import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
