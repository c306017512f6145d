#!/usr/bin/env python3
"""Export a trained model's image / text (or visible / infrared) encoders to ONNX and TorchScript,
verified against PyTorch.

The same command as the installed console script ``fastreid-ext-export``; the code lives in
:mod:`fastreid_ext.tools.export` (``--help`` lists the options, the graph inputs and examples).
"""

from __future__ import annotations

import sys

from fastreid_ext.tools.export import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
