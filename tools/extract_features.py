#!/usr/bin/env python3
"""Encode a gallery (a dataset split or a folder of images) and write a searchable index folder.

The same command as the installed console script ``fastreid-ext-extract-features``; the code
lives in :mod:`fastreid_ext.tools.extract_features` (``--help`` lists the options and examples).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.extract_features import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
