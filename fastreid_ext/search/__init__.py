"""Free-text (and, for visible-infrared models, query-image) person search over a gallery index.

* :class:`Searcher` (:mod:`.engine`): a :class:`~fastreid_ext.inference.Predictor` and the
  :class:`~fastreid_ext.inference.GalleryIndex` it searches, fingerprint-checked; queries in,
  :class:`SearchResult` records (rank, score, path, pid, correct) out.
* :mod:`.queries`: queries from text, a queries file, image files or a dataset split (with their
  identities, so results are marked correct or wrong).
* :mod:`.output`: the printed table, the JSON file, retrieval-grid images.
* :mod:`.web` and :mod:`.file_guard`: the search web page (Flask) and the rule of which files it
  serves (gallery images under the index's roots only).

Command lines: ``tools/search.py`` and ``tools/serve_search.py`` (``fastreid-ext-search``,
``fastreid-ext-serve-search``).
"""

from .engine import FingerprintMismatchError, Searcher, SearchError, check_fingerprint
from .file_guard import FileGuard, RefusedPath
from .output import draw_result, format_table, results_to_json, save_grid, save_grids
from .queries import (
    QueryError,
    image_queries,
    pick_evenly,
    read_queries_file,
    split_queries,
    text_queries,
)
from .records import Hit, Query, SearchResult

__all__ = [
    "FileGuard",
    "FingerprintMismatchError",
    "Hit",
    "Query",
    "QueryError",
    "RefusedPath",
    "SearchError",
    "SearchResult",
    "Searcher",
    "check_fingerprint",
    "draw_result",
    "format_table",
    "image_queries",
    "pick_evenly",
    "read_queries_file",
    "results_to_json",
    "save_grid",
    "save_grids",
    "split_queries",
    "text_queries",
]
