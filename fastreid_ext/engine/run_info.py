"""The run record ``OUTPUT_DIR/run_info.json``: what ran, from which code, with what, how it ended.

Written by the main process only, atomically: once when the run starts (status ``running``) and
again when it ends (``completed``, ``failed``, ``interrupted``, or ``aborted`` when another rank
failed), with the end time. A run that continues an earlier one in the same ``OUTPUT_DIR``
(``--resume`` or ``--eval-only``) keeps the earlier records under ``earlier_runs``; a new training
run replaces them, as it replaces the earlier run's checkpoints and metrics.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Dict, List, Optional

from fastreid.config import CfgNode
from fastreid.utils import comm

from ..utils.atomic_io import atomic_json_dump

__all__ = [
    "RUN_INFO_NAME",
    "KEY_PACKAGES",
    "git_state",
    "package_versions",
    "earlier_run_files",
    "read_run_info",
    "begin_run_record",
    "finish_run_record",
]

logger = logging.getLogger(__name__)

RUN_INFO_NAME = "run_info.json"
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "fastreid",
    "fastreid-ext",
    "numpy",
    "faiss-gpu",
    "faiss-cpu",
    "open_clip_torch",
    "scikit-learn",
    "pillow",
    "yacs",
)
# Files of a training run that a new run in the same OUTPUT_DIR overwrites or appends to.
_RUN_FILES = ("run_info.json", "log.txt", "last_checkpoint", "metrics.json", "results.json")
_GIT_TIMEOUT_S = 10

_lock = threading.Lock()
_active: Optional[Dict[str, Any]] = None
_active_path: Optional[str] = None
_active_t0 = 0.0


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _git(args: List[str], cwd: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # Only trailing newlines go: porcelain status lines start with a meaningful space.
    return out.stdout.rstrip("\n") if out.returncode == 0 else None


def git_state(path: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Commit and dirty state of the git checkout holding ``path`` (default: this package's
    source), or ``None`` when it is not in a checkout (e.g. an installed wheel) or git is absent.

    ``dirty`` counts modified tracked files only: untracked outputs and datasets are not code.
    """
    path = os.path.abspath(path or os.path.dirname(os.path.dirname(__file__)))
    root = _git(["rev-parse", "--show-toplevel"], path)
    commit = _git(["rev-parse", "HEAD"], path) if root else None
    if not root or not commit:
        return None
    # An installed copy inside some checkout's ignored folder (a .venv) is not that checkout's code.
    if not _git(["ls-files", "--", path], root):
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], root)
    changed = [line[3:] for line in (status or "").splitlines() if len(line) > 3]
    return {
        "root": root,
        "commit": commit,
        "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], root),
        "dirty": bool(changed) if status is not None else None,
        "changed_files": changed[:50],
    }


def package_versions(names: tuple = KEY_PACKAGES) -> Dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out), plus Python and CUDA."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    try:
        import torch

        found["torch_cuda_build"] = torch.version.cuda or "none"
        if torch.backends.cudnn.is_available():
            found["cudnn"] = str(torch.backends.cudnn.version())
    except ImportError:
        pass
    return found


def earlier_run_files(output_dir: str) -> List[str]:
    """Names of an earlier run's files in ``output_dir`` that a new training run replaces."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    names = [n for n in _RUN_FILES if os.path.isfile(os.path.join(output_dir, n))]
    names += sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, "model_*.pth")))
    return names


def read_run_info(output_dir: str) -> Optional[Dict[str, Any]]:
    """The record in ``output_dir/run_info.json`` (``None`` if absent or unreadable)."""
    path = os.path.join(output_dir, RUN_INFO_NAME)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _launcher() -> str:
    if "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_RESTART_COUNT" in os.environ:
        return "torchrun"
    return "train_net" if comm.get_world_size() <= 1 else "train_net (mp.spawn)"


def _batch(cfg: CfgNode, world_size: int) -> Dict[str, int]:
    train, test = int(cfg.SOLVER.IMS_PER_BATCH), int(cfg.TEST.IMS_PER_BATCH)
    return {
        "train_total": train,
        "train_per_rank": train // world_size,
        "test_total": test,
        "test_per_rank": max(1, test // world_size),
    }


def _earlier_runs(previous: Optional[Dict[str, Any]], continues: bool) -> List[Dict[str, Any]]:
    if not previous or not continues:
        return []
    older = list(previous.get("earlier_runs") or [])
    latest = {k: v for k, v in previous.items() if k != "earlier_runs"}
    return older + [latest]


def begin_run_record(
    cfg: CfgNode,
    args: argparse.Namespace,
    seed: int,
    previous: Optional[Dict[str, Any]] = None,
) -> Optional[str]:
    """Write ``run_info.json`` for a run that starts now (main process only; returns its path).

    ``seed`` is the seed actually applied on rank 0 (``SEED`` itself, or the generated one when
    ``SEED < 0``; rank ``r`` uses ``seed + r``). ``previous`` is the record found in ``OUTPUT_DIR``
    before this run started; it is kept when this run continues it (``--resume``/``--eval-only``).
    """
    global _active, _active_path, _active_t0
    if not comm.is_main_process() or not cfg.OUTPUT_DIR:
        return None
    world_size = comm.get_world_size()
    eval_only = bool(getattr(args, "eval_only", False))
    resume = bool(getattr(args, "resume", False))
    record: Dict[str, Any] = {
        "status": "running",
        "error": None,
        "start_time": _now(),
        "end_time": None,
        "mode": "eval-only" if eval_only else "train",
        "resume": resume,
        "command": {"argv": list(sys.argv), "executable": sys.executable, "cwd": os.getcwd()},
        "config_file": getattr(args, "config_file", "") or None,
        "output_dir": os.path.abspath(cfg.OUTPUT_DIR),
        "host": socket.gethostname(),
        "launcher": _launcher(),
        "device": str(cfg.MODEL.DEVICE),
        "backend": dist_backend(),
        "world_size": world_size,
        "num_machines": int(getattr(args, "num_machines", 1) or 1),
        "batch": _batch(cfg, world_size),
        "seed": {"config": int(cfg.SEED), "applied": int(seed), "per_rank": "applied + rank"},
        "git": git_state(),
        "packages": package_versions(),
        "earlier_runs": _earlier_runs(previous, resume or eval_only),
    }
    path = os.path.join(cfg.OUTPUT_DIR, RUN_INFO_NAME)
    atomic_json_dump(record, path)
    with _lock:
        _active, _active_path, _active_t0 = record, path, time.monotonic()
    return path


def dist_backend() -> Optional[str]:
    """The default process group's backend (``None`` outside a distributed run)."""
    try:
        import torch.distributed as dist

        return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None
    except (ImportError, RuntimeError, ValueError):
        return None


def finish_run_record(status: str, error: Optional[str] = None) -> None:
    """Close the active record with ``status``, ``error`` and the end time (no-op without one:
    other ranks, or a run that never reached its setup). Safe to call from any thread."""
    global _active
    with _lock:
        record, path, t0 = _active, _active_path, _active_t0
        _active = None
    if record is None or path is None:
        return
    record.update(status=status, error=error, end_time=_now())
    record["duration_s"] = round(time.monotonic() - t0, 1)
    try:
        atomic_json_dump(record, path)
    except OSError as exc:
        logger.warning("Could not write the run record %s: %s", path, exc)
