#!/usr/bin/env python3
"""Train or evaluate any fastreid_ext method: ``python tools/train_net.py --config-file X.yml``.

The same command as the installed console script ``fastreid-ext-train``; the code lives in
:mod:`fastreid_ext.tools.train_net` (``--help`` lists the flags, shipped configs and common
overrides).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.train_net import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
