#!/usr/bin/env python3
"""Serve the person-search web page: ``python tools/serve_search.py --index DIR``.

The same command as the installed console script ``fastreid-ext-serve-search``; the code lives in
:mod:`fastreid_ext.tools.serve_search` (``--help`` lists the flags).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.serve_search import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
