"""Visualisation of runs: retrieval grids, the worst-queries page and training curves.

* :func:`draw_retrieval_grid`: one query (caption or image) and its top-k gallery as an image;
* :func:`visualize_ranking`: grids and ``worst_queries.html`` / ``.png`` of a saved ranking;
* :func:`write_training_curves`: ``training_curves.png`` of a run's ``metrics.json``;
  :class:`TrainingCurvesHook` draws it at the end of training.
"""

from .curves import extract_curves, write_training_curves
from .grid import draw_retrieval_grid, grid_size, load_image
from .hooks import TrainingCurvesHook
from .report import visualize_ranking, worst_queries

__all__ = [
    "TrainingCurvesHook",
    "draw_retrieval_grid",
    "extract_curves",
    "grid_size",
    "load_image",
    "visualize_ranking",
    "worst_queries",
    "write_training_curves",
]
