"""Command-line arguments shared by ``tools/search.py`` and ``tools/serve_search.py``: the index
folder and the model that searches it."""

from __future__ import annotations

import argparse
from typing import List, Optional

from ..config import ConfigValueError
from ..inference import IndexFolderError
from .engine import Searcher, SearchError

__all__ = ["add_index_arguments", "open_searcher", "OPEN_ERRORS"]

#: Errors of :func:`open_searcher` that are the user's input (reported without a traceback).
OPEN_ERRORS = (FileNotFoundError, IndexFolderError, SearchError, ConfigValueError, ValueError)


def add_index_arguments(parser: argparse.ArgumentParser, positional_queries: bool = False) -> None:
    """``--index`` and the model options (defaults: what the index's metadata records)."""
    parser.add_argument(
        "--index",
        required=True,
        metavar="DIR",
        help="gallery index folder written by tools/extract_features.py",
    )
    model = parser.add_argument_group("model (default: the config and weights the index records)")
    model.add_argument("--config-file", metavar="FILE", help="config file or fastreid_ext://...")
    model.add_argument("--weights", metavar="FILE", help="trained checkpoint (.pth)")
    model.add_argument(
        "--opts",
        nargs="+",
        metavar="KEY VALUE",
        help="config overrides the index was built with, as train_net.py's trailing KEY VALUE "
        "pairs" + (" (put queries before --opts)" if positional_queries else ""),
    )
    model.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N"
    )
    model.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="search even when the model's fingerprint differs from the index's (features of "
        "another model: the ranking is then not meaningful)",
    )
    model.add_argument(
        "--same-modality",
        action="store_true",
        help="visible-infrared: let a query image also retrieve gallery images of its own "
        "modality (default: cross-modal only)",
    )


def open_searcher(args: argparse.Namespace) -> Searcher:
    """The :class:`Searcher` of the parsed arguments (see :meth:`Searcher.open`)."""
    opts: Optional[List[str]] = list(args.opts) if args.opts else None
    if opts is not None and len(opts) % 2:
        raise SearchError(f"--opts needs KEY VALUE pairs, got {len(opts)} words: {opts}")
    return Searcher.open(
        args.index,
        config_file=args.config_file,
        weights=args.weights,
        device=args.device,
        allow_mismatch=args.allow_mismatch,
        opts=opts,
        same_modality=args.same_modality,
    )
