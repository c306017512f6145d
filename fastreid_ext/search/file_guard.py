"""Which files the search page may serve: gallery images under the index's recorded roots, only.

A request names an image as ``(root number, path relative to that root)``. :meth:`FileGuard.resolve`
accepts it only when every check passes, on the fully resolved path (``os.path.realpath``: symlinks
and ``..`` followed, so a symlink inside a root that points out of it is refused):

1. the root number exists and the relative path is not absolute;
2. the resolved file lies inside the resolved root (403 otherwise);
3. it is not inside the index folder (403), whose features and metadata are never served;
4. its suffix is an image suffix (403), so no annotation or other file under a root is served;
5. it is one of the index's gallery images (404 otherwise), resolved the same way;
6. it is a regular file (404).
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["IMAGE_SUFFIXES", "FileGuard", "RefusedPath"]

#: File suffixes (lower case) the page serves.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class RefusedPath(Exception):
    """A request for a file the page must not serve; ``status`` is the HTTP code (403 or 404)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _inside(path: str, folder: str) -> bool:
    """True when the resolved ``path`` is ``folder`` or lies below it (both resolved)."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives (Windows) or a mix of absolute and relative
        return False


class FileGuard:
    """Resolve image requests against ``roots`` (absolute folders) and the gallery ``paths``.

    Args:
        roots: folders whose gallery images may be served (the index's ``roots``).
        paths: the gallery images (the index's ``paths``); only these are served.
        forbidden: folders never served even when inside a root (the index folder).
    """

    def __init__(
        self, roots: Sequence[str], paths: Iterable[str], forbidden: Sequence[str] = ()
    ) -> None:
        if not roots:
            raise ValueError("FileGuard: the index records no image roots; nothing can be served")
        self.roots: List[str] = [os.path.realpath(r) for r in roots]
        self.forbidden: List[str] = [os.path.realpath(f) for f in forbidden]
        self.allowed = frozenset(os.path.realpath(p) for p in paths)
        self._url_parts: Dict[str, Optional[Tuple[int, str]]] = {}

    def resolve(self, root: int, rel: str) -> str:
        """The resolved path of image ``rel`` under root number ``root``.

        Raises:
            RefusedPath: with status 403 (outside the roots, inside a forbidden folder, not an
                image suffix) or 404 (no such root, not a gallery image, no such file).
        """
        if not 0 <= root < len(self.roots):
            raise RefusedPath(404, f"no image root number {root}")
        if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")):
            raise RefusedPath(403, "the image path must be relative to its root")
        base = self.roots[root]
        path = os.path.realpath(os.path.join(base, rel))
        if not _inside(path, base):
            raise RefusedPath(403, "the path leaves the image root")
        if any(_inside(path, f) for f in self.forbidden):
            raise RefusedPath(403, "the index folder is not served")
        if not path.lower().endswith(IMAGE_SUFFIXES):
            raise RefusedPath(403, "only image files are served")
        if path not in self.allowed:
            raise RefusedPath(404, "not a gallery image of this index")
        if not os.path.isfile(path):
            raise RefusedPath(404, "the image file does not exist")
        return path

    def url_parts(self, path: str) -> Optional[Tuple[int, str]]:
        """``(root number, relative path)`` under which gallery image ``path`` is served, or
        ``None`` when it would be refused (e.g. a symlink pointing out of the roots)."""
        if path not in self._url_parts:
            self._url_parts[path] = self._find(path)
        return self._url_parts[path]

    def _find(self, path: str) -> Optional[Tuple[int, str]]:
        real = os.path.realpath(path)
        for i, base in enumerate(self.roots):
            if _inside(real, base) and real != base:
                rel = os.path.relpath(real, base).replace(os.sep, "/")
                try:
                    self.resolve(i, rel)
                except RefusedPath:
                    continue
                return i, rel
        return None
