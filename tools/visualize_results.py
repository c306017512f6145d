#!/usr/bin/env python3
"""Draw a finished run's retrieval grids, worst-queries page and training curves.

The same command as the installed console script ``fastreid-ext-visualize-results``; the code lives
in :mod:`fastreid_ext.tools.visualize_results` (``--help`` lists the options).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.visualize_results import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
