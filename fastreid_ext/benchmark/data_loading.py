"""Data loading per worker: items/s of one process decoding and transforming training items, the
way one ``DataLoader`` worker does (``dataset[i]`` in a loop, no batching/collation).

* text-image (Baseline / Propot / CPCL): one caption pair = one JPEG decode, the training
  transforms of ``configs/Baseline/cuhk.yml`` at 384x128 (resize, flip, padding/crop, random
  erasing as configured), the CLIP tokenizer and MLM masking;
* CSDN: one visible-infrared pair = two decodes, the visible image's two views (plain and
  channel-exchanged: CAJ) and the infrared one, each resized to 288x144 (three resizes).

The arithmetic against a GPU step: a step of ``B`` items taking ``t`` seconds needs ``B / t``
items/s; ``workers = ceil(B / (t * rate_per_worker))``. The source images are synthetic JPEGs of
``src_size`` (default 256x128 for CUHK-PEDES-like, 288x144 for SYSU-MM01-like crops).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Dict, List, Sequence

import torch

from ..data.vi.loaders import build_vi_train_set
from ..engine.setup import build_cfg
from ..engine.trainer import ExtTrainer
from ..model_zoo import get_config_file
from ..tools.make_synthetic_data import main as make_t2i_data
from ..tools.make_synthetic_vi_data import main as make_vi_data

__all__ = ["t2i_items_per_s", "csdn_pairs_per_s", "workers_needed", "data_loading_report"]


def _rate(get, n: int) -> float:
    get(0)  # first-call set-up (file cache, transforms) is not a per-item cost
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        get(i)
    return n / (time.perf_counter() - t0)


def t2i_items_per_s(root: str, n: int, size: Sequence[int] = (384, 128)) -> float:
    """Caption pairs/s of the text-image training set (CUHK-PEDES format under ``root``)."""
    hw = f"[{size[0]},{size[1]}]"
    cfg = build_cfg(
        get_config_file("Baseline/cuhk.yml"),
        ["DATASETS.ROOT", root, "MODEL.DEVICE", "cpu", "INPUT.SIZE_TRAIN", hw],
    )
    train_set = ExtTrainer.build_train_set(cfg)
    return _rate(lambda i: train_set[i % len(train_set)], n)


def csdn_pairs_per_s(root: str, n: int, size: Sequence[int] = (288, 144)) -> float:
    """Visible-infrared pairs/s of CSDN's training set (SYSU-MM01 format under ``root``)."""
    hw = f"[{size[0]},{size[1]}]"
    cfg = build_cfg(
        get_config_file("CSDN/sysu.yml"),
        ["DATASETS.ROOT", root, "MODEL.DEVICE", "cpu", "INPUT.SIZE_TRAIN", hw],
    )
    pairs = build_vi_train_set(cfg, is_train=True)
    nv, ni = len(pairs.visible), len(pairs.infrared)
    return _rate(lambda i: pairs[(i % nv, (7 * i) % ni)], n)


def workers_needed(batch: int, step_s: float, rate_per_worker: float) -> int:
    """Loader workers that keep a ``batch``-item step of ``step_s`` seconds fed."""
    return math.ceil(batch / (step_s * rate_per_worker))


def data_loading_report(n: int, src_t2i: Sequence[int], src_vi: Sequence[int]) -> Dict:
    """Measure both pipelines on synthetic data written to a temporary folder."""
    with tempfile.TemporaryDirectory() as root:
        h, w = src_t2i
        make_t2i_data(["--format", "cuhk", "--root", root, "--num-ids", "40", "--images-per-id",
                       "4", "--height", str(h), "--width", str(w), "--split-counts", "30", "5",
                       "5"])  # fmt: skip
        h, w = src_vi
        make_vi_data(["--format", "sysu", "--root", root, "--num-ids", "30",
                      "--images-per-camera", "2", "--height", str(h), "--width", str(w)])  # fmt: skip
        return {
            "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
            "t2i_items_per_s": t2i_items_per_s(root, n),
            "csdn_pairs_per_s": csdn_pairs_per_s(root, n),
        }


def arithmetic_lines(report: Dict, step_times: List[float]) -> List[str]:
    """Workers needed per step time: text-image batch 64, CSDN 32 pairs."""
    lines = ["| pipeline | per worker | batch | " + " | ".join(f"step {t} s" for t in step_times)
             + " |", "|---|---|---|" + "---|" * len(step_times)]  # fmt: skip
    for name, key, batch in (
        ("text-image 384x128 (caption pairs/s)", "t2i_items_per_s", 64),
        ("CSDN 288x144 (VI pairs/s)", "csdn_pairs_per_s", 32),
    ):
        rate = report[key]
        cells = " | ".join(f"{workers_needed(batch, t, rate)} workers" for t in step_times)
        lines.append(f"| {name} | {rate:.1f} | {batch} | {cells} |")
    return lines
