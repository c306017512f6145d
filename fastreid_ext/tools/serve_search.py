"""Serve the person-search web page over a gallery index:
``fastreid-ext-serve-search --index DIR`` (or ``python tools/serve_search.py``), then open the
printed address.

A text box (text-image models) or an image upload (visible-infrared models), and the top-k gallery
images with rank, similarity score and identity (when the index records identities). The page is a
small Flask app (:mod:`fastreid_ext.search.web`, which says why Flask rather than Gradio). It binds
to 127.0.0.1 (this machine only) unless ``--host`` says otherwise, and serves only the index's
gallery images, under the folders the index records as its roots; any other path is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from fastreid_ext.search.cli_args import OPEN_ERRORS, add_index_arguments, open_searcher

__all__ = ["build_parser", "main"]

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


def build_parser(prog: str = "fastreid-ext-serve-search") -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a search page over a gallery index (tools/extract_features.py): "
        "type a caption, see the top-k gallery images with their scores.",
        epilog="example (on the demo's output, see README):\n"
        "  %(prog)s --index output/demo/baseline/gallery_test\n"
        "then open http://127.0.0.1:8765/ (Ctrl-C stops the server)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_index_arguments(parser)
    web = parser.add_argument_group("server")
    web.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind ({DEFAULT_HOST}: this machine only; 0.0.0.0 exposes the page "
        "and the gallery images to the network)",
    )
    web.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0: a free one)"
    )
    web.add_argument("--topk", type=int, default=10, metavar="K", help="default results (10)")
    web.add_argument(
        "--max-topk", type=int, default=100, metavar="K", help="most results a request may ask"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Start the server of ``argv`` (default ``sys.argv[1:]``); returns when it is stopped."""
    prog = os.path.basename(sys.argv[0]) or "fastreid-ext-serve-search"
    parser = build_parser(prog)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.topk < 1 or args.max_topk < 1:
        parser.error("--topk and --max-topk must be at least 1")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("fastreid_ext", "werkzeug"):  # loading, refused requests, the request log
        logging.getLogger(name).setLevel(logging.INFO)
    from fastreid_ext.search.web import create_app, make_server

    try:
        searcher = open_searcher(args)
    except OPEN_ERRORS as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    app = create_app(searcher, topk=args.topk, max_topk=args.max_topk)
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        parser.exit(2, f"{prog}: error: cannot listen on {args.host}:{args.port}: {exc}\n")
    host, port = server.socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"Serving person search over {searcher.gallery_size} images "
        f"({searcher.task}) on http://{shown}:{port}/",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
