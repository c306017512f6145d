"""The run record ``OUTPUT_DIR/run_info.json``, the warning when a new run reuses an ``OUTPUT_DIR``,
the seed lines in the log, and plugin packages' loggers reaching ``OUTPUT_DIR/log.txt``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import REPO, TOOLS, run_isolated, tiny_opts

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "Baseline" / "demo.yml")
PLUGINS = str(REPO / "tests" / "plugins")
FASTREID_SEED_LINE = "Using a generated random seed"
REUSE_WARNING = "already holds an earlier run's files"


def _train(args, timeout: int = 400):
    cmd = [sys.executable, str(TOOLS / "train_net.py"), "--config-file", DEMO, *args]
    return run_isolated(cmd, {"PYTHONPATH": PLUGINS}, timeout=timeout)


def _git_head() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def test_run_record_and_reuse_warning(synthetic_root, tmp_path):
    out = tmp_path / "run"
    opts = [*tiny_opts(synthetic_root, str(out), epochs=1), "SEED", "3"]
    first = _train(opts)
    assert first.returncode == 0, first.stderr[-4000:]
    record = json.loads((out / "run_info.json").read_text())
    assert record["status"] == "completed" and record["error"] is None
    start = datetime.fromisoformat(record["start_time"])
    end = datetime.fromisoformat(record["end_time"])
    # a run of seconds: the monotonic duration agrees with the (whole-second) wall-clock times
    assert record["duration_s"] > 0
    assert abs(record["duration_s"] - (end - start).total_seconds()) <= 1.1
    assert record["world_size"] == 1 and record["mode"] == "train"
    assert record["batch"]["train_total"] == 16 and record["batch"]["train_per_rank"] == 16
    assert record["seed"]["config"] == 3 and record["seed"]["applied"] == 3
    assert record["command"]["argv"][0].endswith("train_net.py")
    assert "SEED" in record["command"]["argv"]
    for package in ("python", "torch", "fastreid", "numpy"):
        assert record["packages"][package], package
    head = _git_head()
    if head:  # a git checkout: its commit and whether tracked files differ from it
        assert record["git"]["commit"] == head
        assert isinstance(record["git"]["dirty"], bool)
    assert record["earlier_runs"] == []
    log = (out / "log.txt").read_text()
    # SEED is applied once and said so; fast-reid's "generated random seed" line is gone
    assert FASTREID_SEED_LINE not in log
    assert re.search(r"Seed: SEED=3; rank 0 seeds python, numpy and torch with 3", log)
    assert REUSE_WARNING not in log

    # the same OUTPUT_DIR again, without --resume, failing on its first step
    fault = ["PLUGINS", "['rank_faults']", "TRAINER.HOOKS", "['FailOnRankHook']"]
    second = _train([*opts, *fault, "FAULT_INJECTION.RANK", "0"])
    assert second.returncode != 0
    assert "injected failure on rank 0" in second.stderr
    log = (out / "log.txt").read_text()
    warning = log[log.index(REUSE_WARNING) - 200 :]
    assert "WARNING" in warning and "--resume" in warning and "model_final.pth" in warning
    record = json.loads((out / "run_info.json").read_text())
    assert record["status"] == "failed" and "injected failure on rank 0" in record["error"]
    assert record["end_time"] and record["earlier_runs"] == []  # the first run was replaced


def test_resume_keeps_the_earlier_record(synthetic_root, tmp_path):
    out = tmp_path / "resumed"
    opts = tiny_opts(synthetic_root, str(out), epochs=2)
    first = _train([*opts, "TRAINER.STOP_AFTER_EPOCHS", "1"])
    assert first.returncode == 0, first.stderr[-4000:]
    second = _train(["--resume", *opts])
    assert second.returncode == 0, second.stderr[-4000:]
    record = json.loads((out / "run_info.json").read_text())
    assert record["resume"] is True and record["status"] == "completed"
    assert [r["status"] for r in record["earlier_runs"]] == ["completed"]
    assert "--resume" not in record["earlier_runs"][0]["command"]["argv"]
    assert REUSE_WARNING not in (out / "log.txt").read_text()


SETUP_AND_LOG = textwrap.dedent(
    """
    import logging, sys
    from fastreid_ext.engine import argument_parser, setup_cfg
    cfg = setup_cfg(argument_parser().parse_args(sys.argv[1:]))
    logging.getLogger("csdn.trainer").info("csdn phase switch marker")
    logging.getLogger("mylab_method").info("mylab marker")
    """
)


def test_plugin_package_loggers_reach_log_txt(tmp_path):
    """Two PLUGINS modules, a project package (csdn) and a module on PYTHONPATH, log under their own
    package names; both lines must land in OUTPUT_DIR/log.txt (fast-reid configures only
    "fastreid")."""
    out = tmp_path / "logs"
    cmd = [sys.executable, "-c", SETUP_AND_LOG, "--config-file", DEMO]
    cmd += ["OUTPUT_DIR", str(out), "PLUGINS", "['csdn', 'mylab_method']"]
    run = run_isolated(cmd, {"PYTHONPATH": PLUGINS}, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    log = (out / "log.txt").read_text()
    assert "csdn.trainer INFO: csdn phase switch marker" in log
    assert "mylab_method INFO: mylab marker" in log
    assert "csdn phase switch marker" in run.stdout  # and the console of rank 0
    assert FASTREID_SEED_LINE not in log + run.stdout + run.stderr


def test_earlier_run_files(tmp_path):
    """What counts as an earlier run's files: checkpoints yes; another rank's log of the current
    run (written while rank 0 looks) no."""
    from fastreid_ext.engine.run_info import earlier_run_files

    (tmp_path / "model_0003.pth").write_bytes(b"x")
    (tmp_path / "log.txt.rank1").write_text("other rank of the current run")
    assert earlier_run_files(str(tmp_path)) == ["model_0003.pth"]
    assert earlier_run_files(str(Path(tmp_path) / "missing")) == []
