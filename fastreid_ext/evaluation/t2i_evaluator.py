"""Text-to-image (and image-to-text) retrieval evaluator, registered as ``TextImageEvaluator``."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm
from tabulate import tabulate

from ..data.text_image import build_t2i_test_loaders, load_text_image_dataset
from ..registry import EVALUATOR_REGISTRY
from .features import IMAGE_KEY, TEXT_KEY, retrieval_features
from .rankings import query_records, rank_queries, write_ranking
from .retrieval_metrics import retrieval_metrics

__all__ = ["TextImageEvaluator"]

logger = logging.getLogger(__name__)


def _ordered(chunks: List[Tuple[torch.Tensor, torch.Tensor]], n: int, what: str) -> torch.Tensor:
    """Concatenate (indices, features) chunks gathered from all ranks into index order."""
    idx = torch.cat([c[0] for c in chunks])
    feats = torch.cat([c[1] for c in chunks])
    if idx.numel() != n or not torch.equal(torch.sort(idx).values, torch.arange(n)):
        raise RuntimeError(
            f"Expected {n} {what} features with indices 0..{n - 1}, got {idx.numel()}"
        )
    out = torch.empty_like(feats)
    out[idx] = feats
    return out


@EVALUATOR_REGISTRY.register()
class TextImageEvaluator(DatasetEvaluator):
    """Every caption of the split is a query against every gallery image (IRRA protocol).

    The model must return ``{"image_feats": [B,D]}`` for batches with ``"images"`` and
    ``{"text_feats": [B,D]}`` for batches with ``"caption_ids"``. Features are gathered from all
    ranks and put back in dataset order; each batch's features go through
    :func:`~fastreid_ext.evaluation.features.retrieval_features` (float32, L2-normalised: the
    features the inference API returns), and the metrics (R@1/5/10, mAP, mINP in %) come from
    :func:`retrieval_metrics` on them. ``metric`` (used to pick ``model_best``) is the t2i R@1.
    """

    def __init__(
        self, cfg: CfgNode, split: Any, output_dir: Optional[str] = None, dataset_name: str = ""
    ) -> None:
        self.cfg = cfg
        self.split = split
        self.output_dir = output_dir
        self.dataset_name = dataset_name
        self.direction = cfg.TEST.T2I.DIRECTION
        if self.direction not in ("t2i", "i2t", "both"):
            raise KeyError(f"TEST.T2I.DIRECTION must be t2i, i2t or both, got '{self.direction}'")
        self.reset()

    @classmethod
    def build(cls, cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None):
        """fast-reid's ``build_evaluator`` contract: ``(data_loader, evaluator)``."""
        dataset = load_text_image_dataset(dataset_name, cfg, "DATASETS.TESTS")
        split = dataset.split(cfg.TEST.T2I.SPLIT)
        return build_t2i_test_loaders(cfg, split), cls(cfg, split, output_dir, dataset_name)

    def reset(self) -> None:
        self._image: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._text: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def process(self, inputs: Dict[str, Any], outputs: Dict[str, torch.Tensor]) -> None:
        idx = inputs["indices"].cpu()
        if IMAGE_KEY in outputs:
            self._image.append((idx, retrieval_features(outputs[IMAGE_KEY])))
        if TEXT_KEY in outputs:
            self._text.append((idx, retrieval_features(outputs[TEXT_KEY])))

    def evaluate(self) -> Dict[str, float]:
        image_parts, text_parts = self._image, self._text
        if comm.get_world_size() > 1:
            comm.synchronize()
            image_parts = sum(comm.gather(self._image), [])
            text_parts = sum(comm.gather(self._text), [])
            if not comm.is_main_process():
                return {}
        gallery = _ordered(image_parts, len(self.split.img_paths), "gallery image")
        queries = _ordered(text_parts, len(self.split.captions), "query caption")
        g_pids = torch.as_tensor(self.split.image_pids)
        q_pids = torch.as_tensor(self.split.caption_pids)
        chunk = self.cfg.TEST.T2I.CHUNK_SIZE
        topk_save = self.cfg.TEST.T2I.SAVE_RANKING_TOPK
        results: OrderedDict[str, float] = OrderedDict()
        rows = []
        if self.direction in ("t2i", "both"):
            m = retrieval_metrics(
                queries, gallery, q_pids, g_pids, normalize=False, chunk_size=chunk
            )
            if topk_save:
                self._save_ranking(topk_save, queries, gallery)
            results.update(m)
            rows.append(["t2i"] + [m[k] for k in ("R1", "R5", "R10", "mAP", "mINP")])
        if self.direction in ("i2t", "both"):
            m = retrieval_metrics(
                gallery, queries, g_pids, q_pids, normalize=False, chunk_size=chunk
            )
            prefix = "" if self.direction == "i2t" else "i2t/"
            results.update({prefix + k: v for k, v in m.items()})
            rows.append(["i2t"] + [m[k] for k in ("R1", "R5", "R10", "mAP", "mINP")])
        results["metric"] = rows[0][1]
        table = tabulate(
            rows,
            headers=["task", "R1", "R5", "R10", "mAP", "mINP"],
            floatfmt=".2f",
            tablefmt="pipe",
        )
        logger.info(
            "Text-image retrieval on %s (%d queries, %d gallery images):\n%s",
            self.dataset_name,
            len(queries),
            len(gallery),
            table,
        )
        return results

    def _save_ranking(self, k: int, queries: torch.Tensor, gallery: torch.Tensor) -> None:
        """Write every caption's top-``k`` images, AP and first-match rank ``[Nq]`` to
        ``ranking_<dataset>.jsonl`` (format: :mod:`fastreid_ext.evaluation.rankings`)."""
        if not self.output_dir:
            return
        split = self.split
        ranked = rank_queries(  # the features retrieval_metrics ranks (normalised in process)
            queries,
            gallery,
            torch.as_tensor(split.caption_pids),
            torch.as_tensor(split.image_pids),
            k,
        )
        q_pids = [int(p) for p in split.caption_pids]
        items = [
            {"img_path": os.path.abspath(p), "pid": int(pid)}
            for p, pid in zip(split.img_paths, split.image_pids)
        ]
        path = os.path.join(self.output_dir, f"ranking_{self.dataset_name or 't2i'}.jsonl")
        write_ranking(
            path,
            (
                {"kind": "t2i", "query": i, "caption": split.captions[i], "pid": q_pids[i], **r}
                for i, r in enumerate(query_records(ranked, q_pids, items))
            ),
        )
        logger.info("Saved the top-%d ranking of every query to %s", ranked.topk.shape[1], path)
