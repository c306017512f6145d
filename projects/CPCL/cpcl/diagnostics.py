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
    """NMI and ARI of ``labels`` ``[N]`` (``-1`` outliers count as singleton clusters) against
    ``true_ids`` ``[N]``, plus the clustered fraction."""
    labels = np.asarray(labels)
    singles = np.where(labels >= 0, labels, labels.max(initial=0) + 1 + np.arange(len(labels)))
    return {
        "nmi": float(normalized_mutual_info_score(true_ids, singles)),
        "ari": float(adjusted_rand_score(true_ids, singles)),
        "clustered": float((labels >= 0).mean()) if len(labels) else 0.0,
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
        """``{"image_nmi", "image_ari", "image_clustered", "text_nmi", ...}`` over all pairs."""
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
