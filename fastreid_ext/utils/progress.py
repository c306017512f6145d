"""Progress reporting for long loops: a tqdm bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from fastreid.utils import comm

__all__ = ["progress"]

T = TypeVar("T")
logger = logging.getLogger("fastreid_ext.progress")


def progress(
    iterable: Iterable[T],
    desc: str,
    total: Optional[int] = None,
    log_every_s: float = 30.0,
    enabled: bool = True,
) -> Iterator[T]:
    """Yield from ``iterable`` while reporting progress on the main process.

    On a TTY a tqdm bar is shown; otherwise (logs, CI) one line is logged at most every
    ``log_every_s`` seconds plus a final line with the elapsed time.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    show = enabled and comm.is_main_process()
    if show and sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)
        return
    start = last = time.perf_counter()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if show and now - last >= log_every_s:
            last = now
            of = f"/{total}" if total else ""
            logger.info("%s: %d%s (%.0f s)", desc, done, of, now - start)
    if show:
        logger.info("%s: %d items done in %.1f s", desc, done, time.perf_counter() - start)
