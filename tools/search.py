#!/usr/bin/env python3
"""Search a gallery index with captions or query images: ``python tools/search.py --index DIR "caption"``.

The same command as the installed console script ``fastreid-ext-search``; the code lives in
:mod:`fastreid_ext.tools.search` (``--help`` lists the flags).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.search import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
