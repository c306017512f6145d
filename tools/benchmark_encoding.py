#!/usr/bin/env python3
"""Gallery encoding throughput (images/s): the inference API against the evaluator's own
extraction, on the same images, model and device.

* "evaluator": the test loader the evaluator builds (``TextImageEvaluator.build`` /
  ``VIReIDEvaluator.build``: its gallery images, or every test image for a visible-infrared
  dataset) driven as ``run_inference`` drives it -- model forward in eval mode, then
  ``evaluator.process`` per batch (metrics are not computed).
* "api": ``Predictor.encode_images`` over the same image paths (per modality for a
  visible-infrared model), same batch size and loader processes.

The best of ``--repeats`` passes is reported, with the largest difference between the two
feature sets (0 on the CPU: the API's features are the evaluator's). Without ``--weights`` the
script writes a synthetic dataset and a random-init checkpoint of ``--config-file`` (default: the
tiny Baseline demo) to a temporary folder; pass a real config, ``--weights``, ``--dataset`` and
``--root`` for a real model.

Examples:
    OMP_NUM_THREADS=2 python tools/benchmark_encoding.py
    python tools/benchmark_encoding.py --config-file configs/Baseline/cuhk.yml \\
        --weights output/cuhk/model_final.pth --root /data --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import torch

from fastreid_ext.benchmark.floors import sync_device
from fastreid_ext.data.synthetic import write_synthetic_dataset
from fastreid_ext.data.text_image import load_text_image_dataset
from fastreid_ext.data.vi.base import INFRARED, VISIBLE
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.checkpoint import ExtCheckpointer, build_model_info
from fastreid_ext.evaluation.features import IMAGE_KEY, retrieval_features
from fastreid_ext.inference import Predictor
from fastreid_ext.inference.loading import VISIBLE_INFRARED
from fastreid_ext.model_zoo import resolve_config_path
from fastreid_ext.registry import EVALUATOR_REGISTRY, TRAINER_REGISTRY, lookup


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    """Command-line options (trailing ``KEY VALUE`` pairs are config overrides)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default="fastreid_ext://Baseline/demo.yml")
    p.add_argument("--weights", help="trained checkpoint (default: a random-init one)")
    p.add_argument("--dataset", default="CUHKPEDES", help="a registered dataset")
    p.add_argument("--root", help="dataset root (default: synthetic data in a temp folder)")
    p.add_argument("--num-ids", type=int, default=120, help="synthetic data: identities")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="default: TEST.IMS_PER_BATCH")
    p.add_argument("--num-workers", type=int, help="loader processes (default: the config's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: keep the default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def _setup(args: argparse.Namespace, tmp: str) -> Tuple[str, List[str]]:
    """The weights path and config overrides (synthetic data / random checkpoint if needed)."""
    opts = list(args.opts)
    if args.root is None:
        args.root = os.path.join(tmp, "data")
        test_ids = args.num_ids // 2
        counts = (args.num_ids - test_ids - 10, 10, test_ids)
        write_synthetic_dataset(args.root, "cuhk", args.num_ids, 4, split_counts=counts)
    opts += ["DATASETS.ROOT", args.root, "MODEL.DEVICE", "cpu"]
    if args.num_workers is not None:
        opts += ["DATALOADER.NUM_WORKERS", str(args.num_workers)]
    if args.batch_size:
        opts += ["TEST.IMS_PER_BATCH", str(args.batch_size)]
    if args.weights:
        return args.weights, opts
    cfg = build_cfg(resolve_config_path(args.config_file), opts)
    cfg.MODEL.HEADS.NUM_CLASSES = load_text_image_dataset(args.dataset, cfg).num_train_pids
    model = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME").build_model(cfg)
    ExtCheckpointer(model, tmp, model_info=build_model_info(cfg)).save("random")
    return os.path.join(tmp, "random.pth"), opts


def _evaluator_pass(predictor: Predictor, dataset: str) -> Tuple[torch.Tensor, float]:
    """Features ``[N, D]`` (evaluator index order) and seconds of the evaluator's extraction."""
    cfg = predictor.cfg
    cls = lookup(EVALUATOR_REGISTRY, cfg.TEST.EVALUATOR, "TEST.EVALUATOR")
    loader, evaluator = cls.build(cfg, dataset)
    if predictor.task != VISIBLE_INFRARED:
        loader = loader.loaders[0]  # the gallery images (the captions come after)
    evaluator.reset()
    model, seen = predictor.model, []
    start = time.perf_counter()
    with torch.no_grad():  # the predictor's model is in eval mode, as run_inference sets it
        for batch in loader:
            out = model(batch)
            evaluator.process(batch, out)
            seen.append((batch["indices"], out[IMAGE_KEY]))
    sync_device(predictor.device)
    seconds = time.perf_counter() - start
    idx = torch.cat([i for i, _ in seen])
    feats = torch.empty(len(idx), seen[0][1].shape[1])
    feats[idx] = torch.cat([retrieval_features(f) for _, f in seen])  # what process() keeps
    return feats, seconds


def _image_lists(predictor: Predictor, dataset: str) -> Tuple[Dict[str, List[str]], List[int]]:
    """``{modality or "": paths}`` and the evaluator index of each path, in that order."""
    cfg = predictor.cfg
    cls = lookup(EVALUATOR_REGISTRY, cfg.TEST.EVALUATOR, "TEST.EVALUATOR")
    _, evaluator = cls.build(cfg, dataset)
    if predictor.task != VISIBLE_INFRARED:
        paths = list(evaluator.split.img_paths)
        return {"": paths}, list(range(len(paths)))
    images, lists, order = evaluator.plan.images, {}, []
    for name, flag in (("visible", VISIBLE), ("infrared", INFRARED)):
        rows = [i for i, x in enumerate(images) if x.modality == flag]
        lists[name], order = [images[i].img_path for i in rows], order + rows
    return lists, order


def _api_pass(predictor: Predictor, lists: Dict[str, List[str]]) -> Tuple[torch.Tensor, float]:
    bs = predictor.cfg.TEST.IMS_PER_BATCH
    start = time.perf_counter()
    feats = [
        predictor.encode_images(paths, modality=m or None, batch_size=bs, progress=False)
        for m, paths in lists.items()
        if paths
    ]
    sync_device(predictor.device)
    return torch.cat(feats), time.perf_counter() - start


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights, opts = _setup(args, tmp)
        predictor = Predictor.from_config(args.config_file, weights, opts, device=args.device)
        lists, order = _image_lists(predictor, args.dataset)
        n = len(order)
        best = {"evaluator": float("inf"), "api": float("inf")}
        for _ in range(args.repeats):
            ev_feats, ev_s = _evaluator_pass(predictor, args.dataset)
            api_feats, api_s = _api_pass(predictor, lists)
            best["evaluator"], best["api"] = min(best["evaluator"], ev_s), min(best["api"], api_s)
    diff = float((ev_feats[order] - api_feats).abs().max())
    print(
        f"{predictor.method} on {args.dataset}: {n} images, device {predictor.device}, "
        f"batch {predictor.cfg.TEST.IMS_PER_BATCH}, "
        f"{predictor.cfg.DATALOADER.NUM_WORKERS} loader workers, {torch.get_num_threads()} threads"
    )
    print(f"| path | images/s | seconds (best of {args.repeats}) |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {n / seconds:.1f} | {seconds:.3f} |")
    print(
        f"api / evaluator time: {best['api'] / best['evaluator']:.3f}; "
        f"largest feature difference: {diff:.3g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
