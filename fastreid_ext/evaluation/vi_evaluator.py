"""Visible-infrared ReID evaluator (SYSU-MM01 trials, RegDB directions), ``VIReIDEvaluator``."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm
from tabulate import tabulate

from ..data.vi.base import VIEvaluationPlan
from ..data.vi.loaders import build_vi_test_loader, load_vi_dataset
from ..registry import EVALUATOR_REGISTRY
from .features import IMAGE_KEY, retrieval_features
from .rankings import save_vi_rankings
from .vi_metrics import metrics_from_similarity, similarity
from .vi_reference import average_trials

__all__ = ["VIReIDEvaluator", "evaluate_plan"]

logger = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work (so that stage timings are honest on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_plan(
    plan: VIEvaluationPlan,
    feats: torch.Tensor,
    max_rank: int = 20,
    chunk_size: int = 4096,
    timings: Optional[Dict[str, float]] = None,
) -> OrderedDict[str, Dict[str, float]]:
    """Metrics (%) of every task of ``plan`` from the features of its images ``[N, D]``.

    Each task's query features are compared once with its gallery, or with the union of its
    trial galleries (every trial then ranks its own columns); the work runs on ``feats``'
    device. Returns ``{task name: {"R1", ..., "mAP", "mINP"}}``. ``timings``, when given,
    receives the seconds spent in ``"similarity"`` and ``"metrics"``.
    """
    timings = {} if timings is None else timings
    timings.setdefault("similarity", 0.0)
    timings.setdefault("metrics", 0.0)
    if feats.shape[0] != len(plan.images):
        raise ValueError(f"expected {len(plan.images)} features, got {feats.shape[0]}")
    pids = torch.tensor([x.pid for x in plan.images])
    cams = torch.tensor([x.camid for x in plan.images])
    out: OrderedDict[str, Dict[str, float]] = OrderedDict()
    for task in plan.tasks:
        q = torch.as_tensor(task.query)
        galleries = [torch.as_tensor(g) for g in task.galleries]
        _sync(feats.device)
        start_time = time.perf_counter()
        if len(galleries) == 1:
            sims = [similarity(feats[q], feats[galleries[0]])]
        else:
            # one product with the union of the trial galleries, gallery-major so that each
            # trial's columns are contiguous rows
            union, inverse = torch.unique(torch.cat(galleries), return_inverse=True)
            sim_t = similarity(feats[union], feats[q])
            sims = [sim_t[cols] for cols in inverse.split([len(g) for g in galleries])]
        _sync(feats.device)
        timings["similarity"] += time.perf_counter() - start_time
        start_time = time.perf_counter()
        trials = [
            metrics_from_similarity(
                sim if len(galleries) == 1 else sim.t().contiguous(),
                pids[q],
                pids[g],
                cams[q],
                cams[g],
                protocol=task.protocol,
                max_rank=max_rank,
                chunk_size=chunk_size,
            )
            for sim, g in zip(sims, galleries)
        ]
        out[task.name] = average_trials(trials)
        timings["metrics"] += time.perf_counter() - start_time
    return out


def _ordered(parts: List[Tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    idx = torch.cat([p[0] for p in parts])
    feats = torch.cat([p[1] for p in parts])
    if idx.numel() != n or not torch.equal(torch.sort(idx).values, torch.arange(n)):
        raise RuntimeError(f"Expected features of {n} test images, got {idx.numel()}")
    out = torch.empty_like(feats)
    out[idx] = feats
    return out


@EVALUATOR_REGISTRY.register()
class VIReIDEvaluator(DatasetEvaluator):
    """Cross-modality retrieval on a visible-infrared dataset (AGW protocol, exact).

    The loader yields single-modality image batches with ``"modality"`` (0 visible, 1 infrared),
    ``"targets"``, ``"camids"`` and ``"indices"``; the model must return ``{"image_feats":
    [B, D]}`` for them, ranked by the inner product after
    :func:`~fastreid_ext.evaluation.features.retrieval_features` (float32, L2-normalised: the
    features the inference API returns; for CSDN, whose parts are each L2-normalised, the same
    ranking as the raw inner product). Every distinct test image is encoded once (the SYSU
    query once, each gallery image once however many trials draw it), gathered from all ranks,
    then each task
    is scored: SYSU settings ``TEST.VI.SYSU_SETTINGS`` averaged over ``TEST.VI.TRIALS`` gallery
    draws, RegDB directions ``TEST.VI.REGDB_DIRECTIONS``. The first task's metrics are
    unprefixed (``R1, R5, R10, R20, mAP, mINP`` in %, plus ``metric`` = its R1); the others
    are ``"<task>/R1"`` etc.
    """

    def __init__(
        self,
        cfg: CfgNode,
        plan: VIEvaluationPlan,
        dataset_name: str = "",
        output_dir: Optional[str] = None,
    ) -> None:
        self.cfg = cfg
        self.plan = plan
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.reset()

    @classmethod
    def build(cls, cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None):
        """fast-reid's ``build_evaluator`` contract: ``(data_loader, evaluator)``. Building the
        dataset lists its test folders only (SYSU-MM01 lists its training tree on first use)."""
        dataset = load_vi_dataset(dataset_name, cfg, "DATASETS.TESTS")
        vi = cfg.TEST.VI
        tasks = vi.SYSU_SETTINGS if dataset.protocol == "sysu" else vi.REGDB_DIRECTIONS
        if not tasks:
            raise ValueError(f"No evaluation task for {dataset_name}: the TEST.VI list is empty")
        plan = dataset.evaluation_plan(list(tasks), vi.TRIALS)
        return build_vi_test_loader(cfg, plan), cls(cfg, plan, dataset_name, output_dir)

    def reset(self) -> None:
        self._parts: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def process(self, inputs: Dict[str, Any], outputs: Dict[str, torch.Tensor]) -> None:
        if IMAGE_KEY not in outputs:
            raise KeyError(f"VIReIDEvaluator: the model must return '{IMAGE_KEY}' at inference")
        self._parts.append((inputs["indices"].cpu(), retrieval_features(outputs[IMAGE_KEY])))

    def evaluate(self) -> Dict[str, float]:
        parts = self._parts
        if comm.get_world_size() > 1:
            comm.synchronize()
            parts = sum(comm.gather(self._parts), [])
            if not comm.is_main_process():
                return {}
        feats = _ordered(parts, len(self.plan.images))
        per_task = evaluate_plan(
            self.plan, feats, self.cfg.TEST.VI.MAX_RANK, self.cfg.TEST.VI.CHUNK_SIZE
        )
        topk_save = self.cfg.TEST.VI.SAVE_RANKING_TOPK
        if topk_save and self.output_dir:
            for path in save_vi_rankings(
                self.plan, feats, topk_save, self.output_dir, self.dataset_name
            ):
                logger.info("Saved the top-%d ranking of every query to %s", topk_save, path)
        results: OrderedDict[str, float] = OrderedDict()
        rows = []
        for i, (name, m) in enumerate(per_task.items()):
            prefix = "" if i == 0 else f"{name}/"
            results.update({prefix + k: v for k, v in m.items()})
            rows.append([name] + [m[k] for k in ("R1", "R5", "R10", "R20", "mAP", "mINP")])
        results["metric"] = rows[0][1]
        logger.info(
            "Visible-infrared retrieval on %s (%d test images):\n%s",
            self.dataset_name,
            len(self.plan.images),
            tabulate(
                rows,
                headers=["task", "R1", "R5", "R10", "R20", "mAP", "mINP"],
                floatfmt=".2f",
                tablefmt="pipe",
            ),
        )
        return results
