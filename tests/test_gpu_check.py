"""``tools/gpu_check.py --device cpu --tiny``: the CI run of the one-command GPU check.

The tiny mode shares every code path with the GPU mode (methods built from their shipped configs
with random CLIP weights, the trainer's step against a plain loop, CPU autocast bf16 and fp16 with
a GradScaler, the T2I-metric and pseudo-label floors), so this keeps the GPU check from rotting.
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from fastreid_ext.benchmark.gpu_check import markdown_report, run_gpu_check, settings_for
from fastreid_ext.benchmark.methods import METHODS

from .conftest import REPO, run_isolated

pytestmark = pytest.mark.slow


def _finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_tiny_cpu_check_writes_sane_json_and_matching_table(tmp_path):
    out = tmp_path / "check"
    cmd = [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--device", "cpu", "--tiny",
           "--output", str(out), "--budget-s", "3000"]  # fmt: skip
    run = run_isolated(cmd, env_extra={"OMP_NUM_THREADS": "2"}, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "tiny" and report["device"] == "cpu" and report["skipped"] == []
    assert report["errors"] == []

    # every method in bf16, CPCL also in fp16 (the GradScaler path)
    rows = {(r["method"], r["amp"]): r for r in report["methods"]}
    assert set(rows) == {(m, "bf16") for m in METHODS} | {("CPCL", "fp16")}
    for (method, _), r in rows.items():
        n = report["steps_per_loop"]
        assert r["steps_per_mode"] == n and len(r["losses"]) == 2 * n, method
        for key in ("trainer_step_s", "plain_step_s", "throughput_ratio", "peak_memory_mib"):
            assert _finite_positive(r[key]), (method, key, r[key])
        assert r["throughput_ratio"] == pytest.approx(r["plain_step_s"] / r["trainer_step_s"])
        assert all(math.isfinite(v) for v in r["losses"]) and r["loss_finite"], method
        assert r["loss_first5"] == pytest.approx(sum(r["losses"][:5]) / 5)
        assert r["loss_last5"] == pytest.approx(sum(r["losses"][-5:]) / 5)
        # both loops train the same model on two repeated batches: the loss must fall
        assert r["loss_falling"] and r["loss_last5"] < r["loss_first5"], method
        assert r["arch"] == ("tiny-rn" if method.startswith("CSDN") else "tiny-vit")

    t2i, clusters = report["floors"]
    assert t2i["queries"] == 600 and t2i["gallery"] == 300
    assert t2i["ratio"] == pytest.approx(t2i["metrics_s"] / t2i["matmul_s"])
    assert set(t2i["metrics"]) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert 0 < t2i["metrics"]["R1"] <= t2i["metrics"]["R5"] <= t2i["metrics"]["R10"] <= 100
    assert clusters["num"] == 1500 and clusters["clusters"] > 1
    assert clusters["ratio"] == pytest.approx(clusters["pseudo_labels_s"] / clusters["matmul_s"])
    assert 0 <= clusters["outliers"] < 1500

    table = (out / "gpu_check.md").read_text()
    assert table == markdown_report(report)
    method_lines = [ln for ln in table.splitlines() if ln.startswith("| ") and "-vit" in ln
                    or ln.startswith("| CSDN")]  # fmt: skip
    assert len(method_lines) == len(report["methods"])
    for line, r in zip(method_lines, report["methods"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r["method"] and cells[4] == r["amp"]
        assert float(cells[5]) == pytest.approx(1000 * r["trainer_step_s"], abs=0.051)
        assert float(cells[7]) == pytest.approx(r["throughput_ratio"], abs=5e-4)
        assert cells[-1] == "yes"
    assert f"| {t2i['ratio']:.2f} |" in table and f"| {clusters['ratio']:.2f} |" in table


def test_budget_skips_and_says_so():
    report = run_gpu_check(settings_for("cpu", True, budget_s=0.0))
    assert report["methods"] == [] and report["floors"] == []
    assert len(report["skipped"]) == len(METHODS) + 1 + 2
    assert all(s.endswith("(time budget)") for s in report["skipped"])
    assert "Skipped: " in markdown_report(report)


def test_a_failing_part_is_reported_and_the_rest_still_runs(monkeypatch):
    import fastreid_ext.benchmark.gpu_check as gpu_check

    def broken(name, amp, settings):
        raise RuntimeError(f"boom {name}")

    monkeypatch.setattr(gpu_check, "_method_row", broken)
    report = run_gpu_check(settings_for("cpu", True, budget_s=3000.0))
    assert len(report["errors"]) == len(METHODS) + 1  # bf16 for all, fp16 for CPCL
    assert all("RuntimeError: boom" in e for e in report["errors"])
    assert [f["what"].split(",")[0] for f in report["floors"]] == [
        "T2I metrics",
        "CPCL pseudo labels",
    ]
    assert "FAILED: " in markdown_report(report)
