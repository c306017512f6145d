"""Text-to-image (and image-to-text) retrieval evaluator, registered as ``TextImageEvaluator``."""

from __future__ import annotations

import json
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
from ..utils.atomic_io import atomic_open
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
    ranks and put back in dataset order; metrics (R@1/5/10, mAP, mINP in %) come from
    :func:`retrieval_metrics`. ``metric`` (used to pick ``model_best``) is the t2i R@1.
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
        if "image_feats" in outputs:
            self._image.append((idx, outputs["image_feats"].float().cpu()))
        if "text_feats" in outputs:
            self._text.append((idx, outputs["text_feats"].float().cpu()))

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
                queries, gallery, q_pids, g_pids, chunk_size=chunk, return_topk_indices=topk_save
            )
            if topk_save:
                self._save_ranking(m.pop("topk_indices"), queries, gallery)
            results.update(m)
            rows.append(["t2i"] + [m[k] for k in ("R1", "R5", "R10", "mAP", "mINP")])
        if self.direction in ("i2t", "both"):
            m = retrieval_metrics(gallery, queries, g_pids, q_pids, chunk_size=chunk)
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

    def _save_ranking(
        self, topk: torch.Tensor, queries: torch.Tensor, gallery: torch.Tensor
    ) -> None:
        if not self.output_dir:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        q = torch.nn.functional.normalize(queries, dim=1)
        g = torch.nn.functional.normalize(gallery, dim=1)
        path = os.path.join(self.output_dir, f"ranking_{self.dataset_name or 't2i'}.jsonl")
        with atomic_open(path, "w") as f:
            for i in range(topk.shape[0]):
                ids = topk[i].tolist()
                scores = (g[ids] @ q[i]).tolist()
                f.write(
                    json.dumps(
                        {
                            "query": i,
                            "caption": self.split.captions[i],
                            "pid": int(self.split.caption_pids[i]),
                            "ranking": [
                                {
                                    "gallery": j,
                                    "img_path": self.split.img_paths[j],
                                    "score": round(s, 6),
                                    "match": int(self.split.image_pids[j])
                                    == int(self.split.caption_pids[i]),
                                }
                                for j, s in zip(ids, scores)
                            ],
                        }
                    )
                    + "\n"
                )
        logger.info("Saved the top-%d ranking of every query to %s", topk.shape[1], path)
