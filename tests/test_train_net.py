"""``tools/train_net.py`` end to end on synthetic CUHK-PEDES data: train, resume, eval-only,
plugins (config key and entry point), and two gloo processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from .conftest import REPO, TWO_GLOO_RANKS, run_train_net, tiny_opts

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "Baseline" / "demo.yml")
PLUGINS = str(REPO / "tests" / "plugins")


def _results(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def full_run(synthetic_root, tmp_path_factory):
    """Three epochs uninterrupted (the reference for resume and eval-only)."""
    out = tmp_path_factory.mktemp("full")
    run_train_net(
        ["--config-file", DEMO, *tiny_opts(synthetic_root, str(out), epochs=3, workers=1)]
    )
    return out


def test_training_writes_metrics_and_checkpoints(full_run):
    res = _results(full_run / "results.json")
    assert res["R1"] <= res["R5"] <= res["R10"] <= 100.0 and res["metric"] == res["R1"]
    # the last evaluation is the one in metrics.json, and the best one is recorded
    rows = [json.loads(x) for x in (full_run / "metrics.json").read_text().splitlines()]
    evals = [r for r in rows if "metric" in r]
    assert len(evals) == 3 and evals[-1]["mAP"] == pytest.approx(res["mAP"])
    assert res["best"]["metric"] == pytest.approx(max(r["metric"] for r in evals))
    for name in ("model_0000.pth", "model_0001.pth", "model_final.pth", "model_best.pth"):
        assert (full_run / name).is_file(), name
    ckpt = torch.load(full_run / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["iteration"] > 0
    # the training changed the weights
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            _weights(full_run / "model_0000.pth").values(),
            _weights(full_run / "model_final.pth").values(),
        )
    )
    assert (full_run / "metrics.json").is_file()


def test_resume_after_interruption_matches_uninterrupted(full_run, synthetic_root, tmp_path):
    out = str(tmp_path / "resumed")
    opts = tiny_opts(synthetic_root, out, epochs=3, workers=1)
    run_train_net(["--config-file", DEMO, *opts, "TRAINER.STOP_AFTER_EPOCHS", "1"])
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    run_train_net(["--config-file", DEMO, "--resume", *opts])
    a, b = _weights(full_run / "model_final.pth"), _weights(Path(out) / "model_final.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _results(full_run / "results.json") == _results(Path(out) / "results.json")


def test_eval_only_reproduces_final_metrics(full_run, synthetic_root, tmp_path):
    out = tmp_path / "eval"
    run_train_net(
        [
            "--config-file",
            DEMO,
            "--eval-only",
            *tiny_opts(synthetic_root, str(out)),
            "MODEL.WEIGHTS",
            str(full_run / "model_final.pth"),
            "TEST.T2I.DIRECTION",
            "both",
            "TEST.T2I.SAVE_RANKING_TOPK",
            "5",
        ]
    )
    final = _results(full_run / "results.json")
    evaluated = _results(out / "eval_results.json")
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert evaluated[key] == pytest.approx(final[key], abs=1e-6)
    i2t = [evaluated[f"i2t/{k}"] for k in ("R1", "R5", "R10")]
    assert i2t == sorted(i2t) and i2t[-1] <= 100.0 and evaluated["metric"] == evaluated["R1"]
    lines = (out / "ranking_CUHKPEDES.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 8 * 3 * 2  # every test caption is a query
    assert len(first["ranking"]) == 5
    scores = [r["score"] for r in first["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert any(r["match"] for line in lines for r in json.loads(line)["ranking"][:1]) == (
        final["R1"] > 0
    )


def test_eval_only_rejects_wrong_checkpoint(synthetic_root, tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"model": {"backbone.something": torch.zeros(3)}}, bogus)
    with pytest.raises(AssertionError, match="does not match the model"):
        run_train_net(
            [
                "--config-file",
                DEMO,
                "--eval-only",
                *tiny_opts(synthetic_root, str(tmp_path / "e")),
                "MODEL.WEIGHTS",
                str(bogus),
            ]
        )


def test_out_of_tree_plugin_trains_and_ddp_gloo_keeps_ranks_identical(synthetic_root, tmp_path):
    """A method registered by a module named in PLUGINS trains through train_net with
    ``--num-gpus 2`` on CPU: gloo DDP, identical parameters on both ranks, metrics on rank 0."""
    out = tmp_path / "ddp"
    run_train_net(
        [
            "--config-file",
            DEMO,
            *TWO_GLOO_RANKS,
            *tiny_opts(synthetic_root, str(out), epochs=2),
            "PLUGINS",
            "['mylab_method']",
            "MODEL.META_ARCHITECTURE",
            "MyLabLearnedTemperatureT2I",
            "MODEL.MYLAB.INIT_TAU",
            "0.03",
            "TRAINER.HOOKS",
            "['ParamChecksumHook']",
            "TEST.EVAL_PERIOD",
            "2",
        ],
        env_extra={"PYTHONPATH": PLUGINS},
    )
    r0, r1 = (_results(out / f"checksum_rank{r}.json") for r in (0, 1))
    assert r0["world_size"] == 2 and r0["ddp"] == "DistributedDataParallel"
    assert r0["final"] == r1["final"]
    assert r0["final"]["log_tau"] != r0["initial"]["log_tau"]  # the plugin's parameter learned
    changed = [k for k in r0["final"] if r0["final"][k] != r0["initial"][k]]
    assert len(changed) > 10
    assert "R1" in _results(out / "results.json")


def test_entry_point_plugin_is_discovered(synthetic_root, tmp_path):
    site = tmp_path / "site"
    dist = site / "mylab_entry-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab-entry\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fastreid_ext.plugins]\nmylab = mylab_entry\n")
    out = tmp_path / "ep"
    run_train_net(
        [
            "--config-file",
            DEMO,
            *tiny_opts(synthetic_root, str(out), epochs=1),
            "TRAINER.HOOKS",
            "['EntryPointMarkerHook']",
        ],
        env_extra={"PYTHONPATH": os.pathsep.join([str(site), PLUGINS])},
    )
    assert (out / "entry_point_hook.txt").read_text().startswith("loaded")


def test_unknown_names_give_clear_errors(synthetic_root, tmp_path):
    with pytest.raises(AssertionError, match="MODEL.META_ARCHITECTURE.*Known names"):
        run_train_net(
            [
                "--config-file",
                DEMO,
                *tiny_opts(synthetic_root, str(tmp_path / "x")),
                "MODEL.META_ARCHITECTURE",
                "NoSuchMethod",
            ]
        )


def test_torchrun_two_processes(synthetic_root, tmp_path):
    """``torchrun --nproc_per_node 2 tools/train_net.py`` (env:// initialisation, gloo on CPU)."""
    import subprocess
    import sys

    out = tmp_path / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tools" / "train_net.py"),
        "--config-file",
        DEMO,
        *tiny_opts(synthetic_root, str(out), epochs=1),
    ]
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "World size: 2" in (out / "log.txt").read_text()
    assert "R1" in _results(out / "results.json")
