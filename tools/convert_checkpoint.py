#!/usr/bin/env python3
"""Convert a checkpoint released by the IRRA or CSDN authors into a fastreid_ext checkpoint.

The same command as the installed console script ``fastreid-ext-convert-checkpoint``; the code
lives in :mod:`fastreid_ext.tools.convert_checkpoint` (``--help`` lists the formats, the target
configs, OpenAI's CLIP files and examples).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
