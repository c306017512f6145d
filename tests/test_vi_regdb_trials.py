"""tools/regdb_trials.py: trial parsing, the mean ± std summary of per-trial results.json, and
the train_net commands it issues (subprocess mocked)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from .conftest import REPO


def _tool():
    spec = importlib.util.spec_from_file_location(
        "regdb_trials", REPO / "tools" / "regdb_trials.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root, trial: int, res: dict) -> None:
    folder = root / f"trial{trial}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(res))


def test_summary_is_the_mean_and_sample_std_over_trials(tmp_path):
    tool = _tool()
    assert tool.parse_trials("1-3,7") == [1, 2, 3, 7] and tool.parse_trials("5") == [5]
    for bad in ("0-2", "3-11", "a", ""):
        with pytest.raises(ValueError, match="--trials"):
            tool.parse_trials(bad)
    runs = [
        {"R1": 80.0, "mAP": 70.0, "i2v/R1": 78.0, "metric": 80.0, "note": "x"},
        {"R1": 84.0, "mAP": 74.0, "i2v/R1": 79.0, "metric": 84.0},
        {"R1": 85.0, "mAP": 72.0, "metric": 85.0},
    ]
    for t, res in zip((1, 2, 4), runs):
        _write(tmp_path, t, res)
    read = tool.read_trial_results(str(tmp_path), [1, 2, 4])
    assert read[1] == {"R1": 80.0, "mAP": 70.0, "i2v/R1": 78.0, "metric": 80.0}  # numbers only
    summary = tool.summarize([read[t] for t in (1, 2, 4)])
    assert list(summary) == ["R1", "mAP"]  # in every trial; "metric" (= R1) left out
    assert summary["R1"][0] == pytest.approx(83.0)
    assert summary["R1"][1] == pytest.approx(math.sqrt((9 + 1 + 4) / 2))  # n - 1
    assert summary["mAP"] == pytest.approx((72.0, 2.0))
    assert tool.summarize([read[1]])["R1"] == (80.0, 0.0)
    with pytest.raises(FileNotFoundError, match=r"trial3/results.json"):
        tool.read_trial_results(str(tmp_path), [1, 3])
    _write(tmp_path, 5, {"RegDBCrossModal": {"R1": 90.0}, "Other": {"R1": 1.0}})
    assert tool.read_trial_results(str(tmp_path), [5])[5] == {"R1": 90.0}
    assert "R1    83.00 ±  2.65" in tool.format_summary(summary, [1, 2, 4])


def test_main_trains_missing_trials_then_summarises(tmp_path, monkeypatch, capsys):
    tool = _tool()
    out = tmp_path / "regdb"
    _write(out, 1, {"R1": 70.0, "mAP": 60.0})
    calls = []

    def fake_call(cmd):
        calls.append(cmd)
        trial = int(cmd[cmd.index("DATASETS.VI.REGDB_TRIAL") + 1])
        assert cmd[cmd.index("OUTPUT_DIR") + 1] == str(out / f"trial{trial}")
        _write(out, trial, {"R1": 70.0 + trial, "mAP": 60.0})
        return 0

    monkeypatch.setattr(tool.subprocess, "call", fake_call)
    argv = ["--config-file", "configs/CSDN/regdb.yml", "--output-root", str(out), "--trials",
            "1-3", "DATASETS.ROOT", "/data"]  # fmt: skip
    assert tool.main(argv) == 0
    assert len(calls) == 2  # trial 1 had results
    assert "--resume" in calls[0] and calls[0][calls[0].index("DATASETS.ROOT") + 1] == "/data"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == [1, 2, 3] and summary["mean"]["R1"] == pytest.approx(
        (70 + 72 + 73) / 3
    )
    assert "mean ± std over 3 trial(s)" in capsys.readouterr().out
    monkeypatch.setattr(tool.subprocess, "call", lambda cmd: 3)
    assert tool.main(["--config-file", "x.yml", "--output-root", str(out), "--trials", "4"]) == 3
    assert tool.main(["--output-root", str(out), "--trials", "1-2", "--summarize-only"]) == 0
    assert tool.main(["--output-root", str(out), "--trials", "1-2"]) == 2  # no config to train
