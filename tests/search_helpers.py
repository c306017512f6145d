"""Helpers of the search tests: a tiny random Baseline checkpoint and its gallery index."""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import torch

import csdn  # noqa: F401  (see below)
from fastreid_ext.data.vi import write_synthetic_sysu
from fastreid_ext.engine.checkpoint import MODEL_INFO_KEY, build_model_info
from fastreid_ext.engine.setup import build_cfg
from fastreid_ext.inference import GalleryIndex, Predictor, build_gallery_index
from fastreid_ext.registry import TRAINER_REGISTRY, lookup

from .conftest import REPO

# Importing a method package adds its MODEL.<METHOD> keys to every config built afterwards in the
# process, and the model fingerprint hashes the MODEL node: imported here, once, before any index
# is built, CSDN's keys are in every config these tests build, whatever test runs first, so an
# index built in this process and the model a later in-process search loads agree.
DEMO_CONFIG = str(REPO / "configs" / "Baseline" / "demo.yml")
CSDN_DEMO_CONFIG = str(REPO / "configs" / "CSDN" / "demo.yml")


def demo_opts(root: str) -> List[str]:
    """Overrides of configs/Baseline/demo.yml for ``root`` (no worker processes)."""
    return ["DATASETS.ROOT", root, "DATALOADER.NUM_WORKERS", "0"]


def tiny_checkpoint(
    path: str,
    opts: Sequence[str],
    num_classes: int = 24,
    seed: int = 0,
    config: str = DEMO_CONFIG,
) -> str:
    """Save a randomly initialised demo model (default: the Baseline, tiny-vit) at ``path`` as
    training runs save theirs: ``{"model": state dict, "model_info": ...}``."""
    cfg = build_cfg(config, list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HEADS.NUM_CLASSES = num_classes
    torch.manual_seed(seed)
    model = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME").build_model(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": model.state_dict(), MODEL_INFO_KEY: build_model_info(cfg)}, path)
    return path


def build_index(
    weights: str, root: str, index_dir: str, opts: Sequence[str] = (), split: str = "test"
) -> Predictor:
    """Build and save the gallery index of the dataset split under ``root``; returns the
    predictor (config: the demo config plus ``demo_opts(root)`` and ``opts``)."""
    predictor = Predictor.from_config(
        DEMO_CONFIG, weights=weights, opts=demo_opts(root) + list(opts), device="cpu"
    )
    index = build_gallery_index(
        predictor, dataset="CUHKPEDES", split=split, root=root, progress=False
    )
    index.save(index_dir)
    return predictor


def build_vi_index(folder: str) -> Tuple[str, Predictor, GalleryIndex]:
    """A synthetic SYSU-MM01 tree (12 ids) under ``folder``, a tiny random CSDN checkpoint and
    the index of its test split (both modalities, each row's modality recorded); returns
    ``(index folder, predictor, index)``."""
    root = os.path.join(folder, "vi")
    write_synthetic_sysu(root, num_ids=12, images_per_camera=1, seed=3, image_size=(64, 32))
    opts = ["DATASETS.ROOT", root, "DATALOADER.NUM_WORKERS", "0"]
    weights = tiny_checkpoint(
        os.path.join(folder, "csdn.pth"), opts, num_classes=8, config=CSDN_DEMO_CONFIG
    )
    predictor = Predictor.from_config(CSDN_DEMO_CONFIG, weights=weights, opts=opts, device="cpu")
    index = build_gallery_index(predictor, dataset="SYSUMM01CrossModal", root=root, progress=False)
    index_dir = os.path.join(folder, "vi_index")
    index.save(index_dir)
    return index_dir, predictor, index
