"""Atomic file writes: a file that a later run reads is either complete or absent.

Every writer here writes to a temporary file in the destination's folder, flushes and ``fsync``\\ s
it, then ``os.replace``\\ s it over the destination (atomic on POSIX and Windows within one file
system). A process killed mid-write leaves the previous file intact plus, at worst, a temporary
``.<name>.tmp-<pid>-<random>`` file, which :func:`remove_stale_temporaries` deletes and every reader
ignores (the name never matches a file a reader looks for).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from typing import IO, Any, Callable, Iterator, List

__all__ = [
    "TMP_MARKER",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_json_dump",
    "atomic_torch_save",
    "is_temporary",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)

TMP_MARKER = ".tmp-"


def _tmp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}{TMP_MARKER}{os.getpid()}-"


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file left by an interrupted atomic write."""
    base = os.path.basename(name)
    return base.startswith(".") and TMP_MARKER in base


def _fsync_dir(folder: str) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` whose content replaces ``path`` only if the ``with`` block completes.

    ``mode`` is ``"w"`` or ``"wb"`` (plus ``encoding`` etc. in ``kwargs``). On an exception the
    temporary file is removed and ``path`` keeps its previous content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_json_dump(obj: Any, path: str, **json_kwargs: Any) -> None:
    """``json.dump(obj)`` to ``path`` atomically (``indent=2`` and ``default=float`` unless given)."""
    json_kwargs.setdefault("indent", 2)
    json_kwargs.setdefault("default", float)
    text = json.dumps(obj, **json_kwargs)  # serialise first: a bad value leaves no file behind
    atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: str, save: Callable[[Any, IO], None] | None = None) -> None:
    """``torch.save(obj, path)`` atomically (``save(obj, file)`` to use another serialiser)."""
    if save is None:
        import torch

        save = torch.save
    with atomic_open(path, "wb") as f:
        save(obj, f)


def remove_stale_temporaries(folder: str) -> List[str]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (not recursive).

    Call this only where no other process is writing into ``folder`` at the same time (e.g. on the
    main process before training starts). Returns the removed paths.
    """
    removed: List[str] = []
    if not folder or not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if is_temporary(name) and os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    if removed:
        logger.info("Removed %d leftover temporary file(s) in %s", len(removed), folder)
    return removed
