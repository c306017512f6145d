"""Clustering-quality diagnostic of CPCL's pseudo labels (logging only, never fed back).

This is the only CPCL module that reads training identities. It re-parses the annotation files
itself and keeps the ids private; :meth:`PseudoLabelDiagnostics.evaluate` returns scores for the
log. The weak-supervision test trains with scrambled training ids and gets bit-identical weights.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from fastreid.config import CfgNode
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from fastreid_ext.data.text_image import load_text_image_dataset

__all__ = ["PseudoLabelDiagnostics", "clustering_scores"]


def clustering_scores(true_ids: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Agreement of pseudo ``labels`` ``[N]`` (``-1`` = outlier) with ``true_ids`` ``[N]``.

    * ``nmi``: NMI with all outliers together as **one** extra cluster. Outliers cannot raise it
      (a pair set of one impure cluster carries little information; all-outlier labels score
      0), so absorbing outliers into the right clusters is what improves it. This is the score
      reported per epoch.
    * ``nmi_clustered``: NMI over the clustered pairs only (read it with ``clustered``).
    * ``ari``: adjusted Rand index with every outlier a singleton (outliers form no pair).
    * ``clustered``: fraction of pairs with a label.
    """
    true_ids, labels = np.asarray(true_ids), np.asarray(labels)
    if len(labels) == 0:
        return {"nmi": 0.0, "nmi_clustered": 0.0, "ari": 0.0, "clustered": 0.0}
    inside = labels >= 0
    singles = np.where(inside, labels, labels.max(initial=0) + 1 + np.arange(len(labels)))
    one_class = np.where(inside, labels, -1)
    clustered = (
        float(normalized_mutual_info_score(true_ids[inside], labels[inside]))
        if inside.any()
        else 0.0
    )
    return {
        "nmi": float(normalized_mutual_info_score(true_ids, one_class)),
        "nmi_clustered": clustered,
        "ari": float(adjusted_rand_score(true_ids, singles)),
        "clustered": float(inside.mean()),
    }


class PseudoLabelDiagnostics:
    """NMI/ARI of image and text pseudo labels against the true ids of the training pairs.

    The pair order is that of :func:`cpcl.data.build_weak_pairs` (``DATASETS.NAMES`` in order,
    each dataset's training captions in file order).
    """

    def __init__(self, cfg: CfgNode) -> None:
        ids, offset = [], 0
        for name in cfg.DATASETS.NAMES:
            data = load_text_image_dataset(name, cfg)
            ids.extend(p.pid + offset for p in data.train)
            offset += data.num_train_pids
        self._true_ids = np.asarray(ids, dtype=np.int64)

    def evaluate(self, image_labels: np.ndarray, text_labels: np.ndarray) -> Dict[str, float]:
        """``{"image_nmi", "image_nmi_clustered", "image_ari", "image_clustered", "text_nmi",
        ...}`` (see :func:`clustering_scores`) of ``image_labels`` / ``text_labels`` ``[N]``."""
        if len(image_labels) != len(self._true_ids) or len(text_labels) != len(self._true_ids):
            raise ValueError(
                f"diagnostics: {len(self._true_ids)} training pairs in the annotations but "
                f"{len(image_labels)} / {len(text_labels)} pseudo labels"
            )
        out: Dict[str, float] = {}
        for name, labels in (("image", image_labels), ("text", text_labels)):
            for key, value in clustering_scores(self._true_ids, labels).items():
                out[f"{name}_{key}"] = value
        return out
