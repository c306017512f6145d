"""Shared fixtures: one thread per process, synthetic datasets, tiny-model configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

import fastreid_ext  # noqa: E402,F401  (compat fixes + registration)
from fastreid_ext.data.synthetic import write_synthetic_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
# train_net.py flags for two gloo processes on CPU
TWO_GLOO_RANKS = ["--num-gpus", "2", "--dist-url", "auto"]
# the "learns far above chance" data: 100 training, 10 val and LEARN_TEST_IDS test identities
LEARN_TEST_IDS, LEARN_IMAGES_PER_ID = 40, 4


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """A small synthetic CUHK-PEDES tree (24 train / 4 val / 8 test ids, 3 images, 2 captions)."""
    root = tmp_path_factory.mktemp("datasets")
    write_synthetic_dataset(
        str(root),
        "cuhk",
        num_ids=36,
        images_per_id=3,
        captions_per_image=2,
        seed=0,
        image_size=(64, 32),
        split_counts=(24, 4, 8),
    )
    return str(root)


@pytest.fixture(scope="session")
def learn_root(tmp_path_factory) -> str:
    """Synthetic CUHK-PEDES tree on which the demo recipes must learn far above chance."""
    root = tmp_path_factory.mktemp("learn")
    write_synthetic_dataset(
        str(root),
        "cuhk",
        num_ids=150,
        images_per_id=LEARN_IMAGES_PER_ID,
        captions_per_image=2,
        seed=1,
        split_counts=(100, 10, LEARN_TEST_IDS),
    )
    return str(root)


def tiny_opts(root: str, output_dir: str, epochs: int = 2, workers: int = 0) -> List[str]:
    """Config overrides for a fast CPU run of configs/Baseline/demo.yml on ``root``."""
    return [
        "DATASETS.ROOT",
        root,
        "OUTPUT_DIR",
        output_dir,
        "INPUT.SIZE_TRAIN",
        "[64,32]",
        "INPUT.SIZE_TEST",
        "[64,32]",
        "SOLVER.MAX_EPOCH",
        str(epochs),
        "SOLVER.IMS_PER_BATCH",
        "16",
        "SOLVER.WARMUP_EPOCHS",
        "1.0",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        "TEST.EVAL_PERIOD",
        "1",
        "TEST.IMS_PER_BATCH",
        "32",
        "DATALOADER.NUM_WORKERS",
        str(workers),
    ]


def run_train_net(
    args: Sequence[str], env_extra: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``tools/train_net.py`` in a fresh process (one thread), failing with its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "train_net.py"), *args],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"train_net.py {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
