"""One rank fails -> every rank ends within the abort bound, the failing rank's traceback is printed,
the exit code is non-zero and no process is left behind: ``mp.spawn`` ranks on one machine, two
"machines" (separate launchers joined only through the TCPStore, so nothing but the abort watchdog
can end the healthy one) and ``torchrun``. Also: ``--dist-url auto`` never frees its port before
binding it.

The failure comes from ``tests/plugins/rank_faults.py``: a hook that raises on one rank after its
first step, while the other rank goes on into the next step's DDP all-reduce.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import List

import pytest
import torch.distributed as dist

from fastreid_ext.engine.abort import ABORT_TIMEOUT_ENV, DEFAULT_ABORT_TIMEOUT
from fastreid_ext.engine.launch import launch, resolve_abort_timeout

from .conftest import REPO, TOOLS, IsolatedRun, run_isolated, tiny_opts

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "Baseline" / "demo.yml")
PLUGINS = str(REPO / "tests" / "plugins")
ABORT_TIMEOUT = 20
# The required bound: every rank gone within 60 s of the failure.
BOUND_S = 60
# Generous for start-up on a loaded 2-core machine; the run is killed (all processes) after it.
RUN_TIMEOUT_S = 400
MESSAGE = "RuntimeError: injected failure on rank {rank} at iteration 1"


def _fault_opts(root: str, out: Path, rank: int) -> List[str]:
    return [
        *tiny_opts(root, str(out), epochs=2, workers=1),
        "PLUGINS",
        "['rank_faults']",
        "TRAINER.HOOKS",
        "['FailOnRankHook']",
        "FAULT_INJECTION.RANK",
        str(rank),
    ]


def _train_net(*args: str) -> List[str]:
    return [sys.executable, str(TOOLS / "train_net.py"), "--config-file", DEMO, *args]


def _run(cmd: List[str]) -> IsolatedRun:
    return run_isolated(cmd, {"PYTHONPATH": PLUGINS}, timeout=RUN_TIMEOUT_S, linger=15)


def _assert_ended_after_failure(run: IsolatedRun, out: Path, rank: int) -> None:
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    fault = json.loads((out / f"fault_rank{rank}.json").read_text())
    after = run.end_time - fault["time"]
    assert after < BOUND_S, f"ended {after:.1f} s after the failure"
    assert not run.leftovers, f"processes left behind: {run.leftovers}"
    # the failing rank's traceback, tagged with its rank
    assert f"[rank {rank}] failed with {MESSAGE.format(rank=rank)}" in run.stderr, output[-3000:]
    assert "Traceback (most recent call last)" in run.stderr
    assert 'rank_faults.py", line' in run.stderr


def test_failure_on_one_spawned_rank_ends_the_job(synthetic_root, tmp_path):
    out = tmp_path / "spawn"
    cmd = _train_net(
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        "--abort-timeout",
        str(ABORT_TIMEOUT),
        *_fault_opts(synthetic_root, out, rank=1),
    )
    run = _run(cmd)
    _assert_ended_after_failure(run, out, rank=1)
    # rank 0 was ended by its watchdog (logging why), not killed silently by the launcher
    assert "[rank 0] stopping: rank 1 failed" in run.stderr
    assert "train_net.py: Rank 1" in run.stderr
    record = json.loads((out / "run_info.json").read_text())
    assert record["status"] == "aborted" and "injected failure on rank 1" in record["error"]
    assert record["world_size"] == 2 and record["batch"]["train_per_rank"] == 8
    # the plugin package's own logger reaches log.txt
    assert "rank_faults.hook INFO: fault injection armed" in (out / "log.txt").read_text()


@pytest.mark.parametrize("failing_rank", [1, 0])
def test_failure_on_another_machine_ends_the_job(synthetic_root, tmp_path, failing_rank):
    """Two launchers of one rank each (``--num-machines 2``): they share only the TCPStore that
    rank 0 hosts, so the healthy one can only be ended by its watchdog. Rank 0 failing also
    takes the store down with it."""
    with socket.socket() as s:  # tcp:// with a fixed port, as on a real cluster
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = [tmp_path / f"machine{m}" for m in (0, 1)]
    common = ["--num-gpus", "1", "--num-machines", "2", "--dist-url", f"tcp://127.0.0.1:{port}"]
    common += ["--abort-timeout", str(ABORT_TIMEOUT)]
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda m: _run(
                    _train_net(
                        *common,
                        "--machine-rank",
                        str(m),
                        *_fault_opts(synthetic_root, outs[m], failing_rank),
                    )
                ),
                (0, 1),
            )
        )
    healthy = 1 - failing_rank
    _assert_ended_after_failure(runs[failing_rank], outs[failing_rank], failing_rank)
    fault = json.loads((outs[failing_rank] / f"fault_rank{failing_rank}.json").read_text())
    other = runs[healthy]
    assert other.returncode != 0, other.stderr[-3000:]
    assert other.end_time - fault["time"] < BOUND_S
    assert not other.leftovers
    assert f"[rank {healthy}] stopping: rank {failing_rank} failed" in other.stderr, other.stderr[
        -3000:
    ]
    assert MESSAGE.format(rank=failing_rank) in other.stderr


def test_failure_under_torchrun_ends_the_job(synthetic_root, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(TOOLS / "train_net.py"),
        "--config-file",
        DEMO,
        "--abort-timeout",
        str(ABORT_TIMEOUT),
        *_fault_opts(synthetic_root, out, rank=1),
    ]
    run = _run(cmd)
    _assert_ended_after_failure(run, out, rank=1)
    record = json.loads((out / "run_info.json").read_text())
    assert record["launcher"] == "torchrun" and record["status"] == "aborted"


def test_abort_timeout_resolution(monkeypatch):
    monkeypatch.delenv(ABORT_TIMEOUT_ENV, raising=False)
    assert resolve_abort_timeout() == DEFAULT_ABORT_TIMEOUT
    monkeypatch.setenv(ABORT_TIMEOUT_ENV, "12.5")
    assert resolve_abort_timeout() == 12.5
    assert resolve_abort_timeout(7) == 7.0  # the flag wins over the environment
    monkeypatch.setenv(ABORT_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=ABORT_TIMEOUT_ENV):
        resolve_abort_timeout()
    with pytest.raises(ValueError, match="> 0"):
        resolve_abort_timeout(0)


def _all_reduce_world(out_dir: str) -> None:
    """Runs in each spawned rank: all-reduce the ranks, record the result."""
    import torch

    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    path = os.path.join(out_dir, f"rank{dist.get_rank()}.txt")
    with open(path, "w") as f:
        f.write(str(int(value.item())))


def test_dist_url_auto_never_releases_its_port(tmp_path, monkeypatch):
    """Another program grabs every port the moment a socket bound to port 0 is closed -- the
    window between finding a free port and binding it again. The launcher must still start."""
    original_bind, original_close = socket.socket.bind, socket.socket.close
    wildcard_bound: set = set()
    thieves: List[socket.socket] = []

    def bind(self, address):
        original_bind(self, address)
        if isinstance(address, tuple) and address[1] == 0:
            wildcard_bound.add(id(self))

    def close(self):
        port = None
        if id(self) in wildcard_bound and self.fileno() >= 0:
            wildcard_bound.discard(id(self))
            port = self.getsockname()[1]
        original_close(self)
        if port:
            thief = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            original_bind(thief, ("", port))
            thief.listen()
            thieves.append(thief)

    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "close", close)
    try:
        launch(_all_reduce_world, 2, dist_url="auto", args=(str(tmp_path),), backend="gloo")
    finally:
        monkeypatch.undo()
        for thief in thieves:
            thief.close()
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["3", "3"]
