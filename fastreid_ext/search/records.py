"""Search queries and results as plain records (what the CLI prints and writes, and the page shows).

A :class:`Query` is a caption (text-to-image index) or an image with its modality
(visible-infrared index), with the identity it shows when that is known (``pid``: queries read
from a dataset split, or given with one). A :class:`SearchResult` holds its top-k
:class:`Hit`\\ s, best first; ``Hit.correct`` is ``hit.pid == query.pid`` when both are known,
else ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["Hit", "Query", "SearchResult"]


@dataclass(frozen=True)
class Query:
    """One search query.

    Attributes:
        text: the caption (text queries), else ``None``.
        image: path of the query image (image queries), else ``None``.
        modality: ``"visible"`` or ``"infrared"`` for image queries, else ``None``.
        pid: identity the query shows, when known (ground truth), else ``None``.
        source: where the query came from, e.g. ``"argument 1"``, ``"queries.txt:3"``,
            ``"CUHKPEDES/test caption 17"``.
    """

    text: Optional[str] = None
    image: Optional[str] = None
    modality: Optional[str] = None
    pid: Optional[int] = None
    source: str = ""

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise ValueError(f"Query ({self.source}): give exactly one of text and image")
        if self.text is not None and not self.text.strip():
            raise ValueError(f"Query ({self.source}): the text is empty")

    @property
    def is_text(self) -> bool:
        """True for a caption query."""
        return self.text is not None

    @property
    def label(self) -> str:
        """One line naming the query: the caption, or ``"<modality> image <path>"``."""
        if self.text is not None:
            return self.text
        return f"{self.modality or ''} image {self.image}".strip()

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready fields (``None`` for unknown ones)."""
        return {
            "text": self.text,
            "image": self.image,
            "modality": self.modality,
            "pid": self.pid,
            "source": self.source,
        }


@dataclass(frozen=True)
class Hit:
    """One retrieved gallery image.

    Attributes:
        rank: 1 for the best match.
        score: cosine similarity of the query and gallery features (both L2-normalised).
        gallery_index: row of the image in the gallery index.
        path: absolute path of the image.
        pid: the image's identity when the index records identities, else ``None``.
        correct: ``pid == query.pid`` when both are known, else ``None``.
    """

    rank: int
    score: float
    gallery_index: int
    path: str
    pid: Optional[int] = None
    correct: Optional[bool] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready fields."""
        return {
            "rank": self.rank,
            "score": self.score,
            "gallery_index": self.gallery_index,
            "path": self.path,
            "pid": self.pid,
            "correct": self.correct,
        }


@dataclass(frozen=True)
class SearchResult:
    """A query and its top-k hits, best first."""

    query: Query
    hits: List[Hit] = field(default_factory=list)

    @property
    def has_ground_truth(self) -> bool:
        """True when every hit has a ``correct`` flag."""
        return bool(self.hits) and all(h.correct is not None for h in self.hits)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready ``{"query": {...}, "hits": [{...}, ...]}``."""
        return {"query": self.query.to_dict(), "hits": [h.to_dict() for h in self.hits]}
