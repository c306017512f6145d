"""Runs that lose nothing and hide nothing: atomic checkpoints, the best checkpoint across
``--resume``, checkpoint-before-evaluation, start-up checks, evaluation metrics in
``metrics.json`` and TensorBoard, the best record in ``results.json``.

Faults come from ``tests/plugins/engine_faults.py``: an evaluator whose main metric per epoch is
scripted (so the best epoch is known in advance) and a ``torch.save`` that dies half-way through
writing a chosen checkpoint, as a kill would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from .conftest import REPO, TOOLS, run_train_net, tiny_opts

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "Baseline" / "demo.yml")
PLUGINS = str(REPO / "tests" / "plugins")
EPOCHS = 4
# main metric after each epoch: epoch 1 is the best; epochs 2 and 3 are worse
SCRIPT = "50,90,10,20"
ITERS_PER_EPOCH = 9  # 24 ids x 3 images x 2 captions = 144 pairs / batch 16


def _opts(root: str, out: Path, *extra: str) -> List[str]:
    return [
        "--config-file",
        DEMO,
        *tiny_opts(root, str(out), epochs=EPOCHS),
        "SOLVER.CHECKPOINT_PERIOD",
        "10",  # as the real configs: model_best.pth is for long the only checkpoint
        "TRAINER.LOG_PERIOD",
        "3",  # the last iteration of every epoch is logged before the evaluation
        "PLUGINS",
        '["engine_faults"]',
        "TEST.EVALUATOR",
        "ScriptedTextImageEvaluator",
        *extra,
    ]


def _env(**extra: str) -> Dict[str, str]:
    path = os.pathsep.join(p for p in (PLUGINS, os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "FAULT_SCRIPTED_METRICS": SCRIPT, **extra}


def _run(args: List[str], env: Dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """train_net.py that may fail: the completed process, whatever its exit code."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
    return subprocess.run(
        [sys.executable, str(TOOLS / "train_net.py"), *args],
        cwd=str(REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _ckpt(a)["model"], _ckpt(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def scripted_run(synthetic_root, tmp_path_factory) -> Path:
    """Four epochs uninterrupted, main metric 50, 90, 10, 20."""
    out = tmp_path_factory.mktemp("scripted")
    run_train_net(_opts(synthetic_root, out), env_extra=_env())
    return out


def test_best_checkpoint_and_record(scripted_run):
    best = _ckpt(scripted_run / "model_best.pth")
    assert best["epoch"] == 1 and best["metric"] == 90.0
    res = json.loads((scripted_run / "results.json").read_text())
    assert res["metric"] == 20.0  # the last evaluation stays at the top level
    assert res["best"]["metric"] == 90.0
    assert res["best"]["epoch"] == 1
    assert res["best"]["checkpoint"] == "model_best.pth"
    assert res["best"]["results"]["metric"] == 90.0


def _metric_rows(path: Path) -> List[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "metric" in r]


def test_every_evaluation_reaches_metrics_json_and_tensorboard(scripted_run):
    expected = {(e + 1) * ITERS_PER_EPOCH - 1: float(m) for e, m in enumerate(SCRIPT.split(","))}
    rows = _metric_rows(scripted_run / "metrics.json")
    assert {r["iteration"]: r["metric"] for r in rows} == expected
    assert len(rows) == EPOCHS  # once each
    for r in rows:
        assert {"R1", "R5", "R10", "mAP", "mINP"} <= r.keys()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(scripted_run))
    acc.Reload()
    assert "R1" in acc.Tags()["scalars"]
    events = acc.Scalars("metric")
    assert {e.step: e.value for e in events} == pytest.approx(expected)
    r1 = {e.step: e.value for e in acc.Scalars("R1")}
    assert r1 == pytest.approx({r["iteration"]: r["R1"] for r in rows})


def test_resume_keeps_the_best_checkpoint(scripted_run, synthetic_root, tmp_path):
    """Interrupted after epoch 3 (metric 10), resumed: epoch 4 (metric 20) must not replace the
    best checkpoint of epoch 2 (metric 90)."""
    out = tmp_path / "resumed"
    run_train_net(_opts(synthetic_root, out, "TRAINER.STOP_AFTER_EPOCHS", "3"), env_extra=_env())
    run_train_net(["--resume", *_opts(synthetic_root, out)], env_extra=_env())
    best = _ckpt(out / "model_best.pth")
    assert (best["epoch"], best["metric"]) == (1, 90.0)
    _assert_same_weights(out / "model_best.pth", scripted_run / "model_best.pth")
    res = json.loads((out / "results.json").read_text())
    ref = json.loads((scripted_run / "results.json").read_text())
    assert res["best"] == ref["best"]


def test_kill_while_saving_the_only_checkpoint_resumes_exactly(
    scripted_run, synthetic_root, tmp_path
):
    """The second save of model_best.pth -- then the only checkpoint, named by last_checkpoint --
    dies half-way. The earlier model_best.pth survives, --resume continues from it, removes the
    partial temporary file and ends with the uninterrupted run's weights."""
    out = tmp_path / "killed"
    proc = _run(_opts(synthetic_root, out), _env(FAULT_KILL_SAVE="model_best:2"))
    assert proc.returncode != 0
    assert (out / "last_checkpoint").read_text().strip() == "model_best.pth"
    assert _ckpt(out / "model_best.pth")["epoch"] == 0  # complete and loadable
    leftovers = [p for p in os.listdir(out) if p.startswith(".model_best.pth.tmp-")]
    assert leftovers, "the kill should leave the partial temporary file behind"

    run_train_net(["--resume", *_opts(synthetic_root, out)], env_extra=_env())
    assert not [p for p in os.listdir(out) if ".tmp-" in p]
    _assert_same_weights(out / "model_final.pth", scripted_run / "model_final.pth")
    _assert_same_weights(out / "model_best.pth", scripted_run / "model_best.pth")


def test_failing_final_evaluation_keeps_the_final_weights(synthetic_root, tmp_path):
    out = tmp_path / "evalfail"
    proc = _run(_opts(synthetic_root, out), _env(FAULT_EVAL_FAIL_EPOCH=str(EPOCHS - 1)))
    assert proc.returncode != 0
    assert "injected evaluation failure after epoch 3" in proc.stdout + proc.stderr
    final = _ckpt(out / "model_final.pth")
    assert final["epoch"] == EPOCHS - 1


def test_unknown_test_dataset_fails_before_training(synthetic_root, tmp_path):
    out = tmp_path / "typo"
    proc = _run(_opts(synthetic_root, out, "DATASETS.TESTS", '["CUHKPEDESS"]'), _env(), timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "DATASETS.TESTS" in text and "CUHKPEDESS" in text
    assert "Starting training" not in text
    assert not list(out.glob("*.pth"))


def test_run_of_two_iterations_completes(synthetic_root, tmp_path):
    """Fewer iterations than fast-reid's timer warm-up (3): the console printer has no iteration
    time yet and writes twice at the last iteration (fast-reid's divided by zero there)."""
    out = tmp_path / "short"
    args = ["--config-file", DEMO, *tiny_opts(synthetic_root, str(out), epochs=1)]
    run_train_net([*args, "SOLVER.IMS_PER_BATCH", "64", "TRAINER.LOG_PERIOD", "1"])
    assert _ckpt(out / "model_final.pth")["iteration"] == 2
    assert "R1" in json.loads((out / "results.json").read_text())
