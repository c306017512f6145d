"""Shared fixtures: one thread per process, synthetic datasets, tiny-model configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

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


# Set in the environment of every process run_isolated starts, and inherited by all its
# descendants (spawned ranks, torchrun workers in sessions of their own, data-loader workers).
RUN_MARKER_ENV = "FASTREID_EXT_TEST_RUN"


def _marked_processes(marker: str) -> List[int]:
    """Pids of live processes whose environment carries ``RUN_MARKER_ENV=marker`` (Linux)."""
    entry_wanted = f"{RUN_MARKER_ENV}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if entry_wanted in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat") as st:  # zombies are gone already
                        if st.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill_marked(marker: str, leader: int) -> None:
    try:
        os.killpg(leader, signal.SIGKILL)
    except OSError:
        pass
    for pid in _marked_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@dataclass
class IsolatedRun:
    """Outcome of :func:`run_isolated`; ``leftovers``: pids of the run still alive at the end."""

    args: List[str]
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    end_time: float
    leftovers: List[int] = field(default_factory=list)


def run_isolated(
    cmd: Sequence[str],
    env_extra: Dict[str, str] | None = None,
    timeout: float = 600,
    linger: float = 0.0,
) -> IsolatedRun:
    """Run ``cmd`` in the repository in a session of its own, one thread per process.

    ``env_extra`` is added to the environment (its ``PYTHONPATH`` goes in front of ours, it does
    not replace it). On timeout the whole run -- the session and every process that inherited its
    marker -- is killed and ``subprocess.TimeoutExpired`` raised with the output. ``linger``:
    seconds to wait after the command ended for its descendants to go away; any still alive are
    reported in ``leftovers``, then killed.
    """
    marker = uuid.uuid4().hex
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    extra = dict(env_extra or {})
    if extra.get("PYTHONPATH") and os.environ.get("PYTHONPATH"):
        extra["PYTHONPATH"] = os.pathsep.join([extra["PYTHONPATH"], os.environ["PYTHONPATH"]])
    env.update(extra, **{RUN_MARKER_ENV: marker})
    start = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_marked(marker, proc.pid)
        stdout, stderr = proc.communicate()
        exc.stdout, exc.stderr = stdout, stderr
        if hasattr(exc, "add_note"):
            exc.add_note(f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-5000:]}")
        raise
    end = time.time()
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + linger
    leftovers = _marked_processes(marker)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.5)
        leftovers = _marked_processes(marker)
    if leftovers:
        _kill_marked(marker, proc.pid)
    return IsolatedRun(list(cmd), proc.returncode, stdout, stderr, elapsed, end, leftovers)


def run_train_net(
    args: Sequence[str], env_extra: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``tools/train_net.py`` in a fresh process (one thread), failing with its output.

    The run is killed with all its processes (spawned ranks included) if it exceeds ``timeout``.
    """
    cmd = [sys.executable, str(TOOLS / "train_net.py"), *args]
    run = run_isolated(cmd, env_extra, timeout=timeout)
    if run.returncode != 0:
        raise AssertionError(
            f"train_net.py {' '.join(args)} failed ({run.returncode}):\n"
            f"{run.stdout[-4000:]}\n{run.stderr[-6000:]}"
        )
    return subprocess.CompletedProcess(cmd, run.returncode, run.stdout, run.stderr)
