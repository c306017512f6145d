"""Propot through the trainer: two gloo ranks get identical initial prototypes equal to the
per-identity encoder sums, and a second two-rank run reloads them from the cache; evaluation needs
no prototype tensor; every config (datasets, demo, Table-4/5 ablations) builds and trains; the
demo recipes learn, and Propot's trains L_p2i and changes the baseline's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from fastreid.modeling.meta_arch import build_model

from fastreid_ext.data.synthetic import write_synthetic_dataset
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.checkpoint import load_for_inference
from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.solver import build_optimizer
from fastreid_ext.text import ClipTokenizer, mask_tokens
from propot.modeling import PROTOTYPE_AGGREGATIONS

from .conftest import REPO, TOOLS, TWO_GLOO_RANKS, run_train_net, tiny_opts
from .test_propot_initial_prototypes import NUM_IDS, direct_sums

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

CONFIGS = REPO / "configs" / "Propot"
DEMO = str(CONFIGS / "demo.yml")
PLUGINS = str(REPO / "tests" / "plugins")


def _two_rank_run(root: str, out, *opts: str) -> None:
    """One epoch of the demo config on two gloo ranks, recording the initial prototypes (the
    probe hook replaces PropotInitialPrototypeHook and records what it produced)."""
    run_train_net(
        [
            "--config-file",
            DEMO,
            *TWO_GLOO_RANKS,
            *tiny_opts(root, str(out), epochs=1),
            "PLUGINS",
            "['propot','propot_probe']",
            "TRAINER.HOOKS",
            "['PropotProbeHook']",
            *opts,
        ],
        env_extra={"PYTHONPATH": PLUGINS},
    )


@pytest.fixture(scope="module")
def ddp_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("propot_ddp")
    _two_rank_run(synthetic_root, out)
    return out


def test_ddp_ranks_share_initial_prototypes_equal_to_identity_sums(
    ddp_run, synthetic_root, tmp_path
):
    r0, r1 = (torch.load(ddp_run / f"propot_probe_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["source"] == r1["source"] == "computed"
    assert torch.equal(r0["initial_v"], r1["initial_v"])
    assert torch.equal(r0["initial_t"], r1["initial_t"])
    cfg = build_cfg(
        DEMO, tiny_opts(synthetic_root, str(tmp_path)) + ["MODEL.HEADS.NUM_CLASSES", str(NUM_IDS)]
    )
    model = build_model(cfg)
    model.backbone.load_state_dict(r0["backbone"])
    from fastreid_ext.data.text_image import load_text_image_dataset

    ref_v, ref_t = direct_sums(model, load_text_image_dataset("CUHKPEDES", cfg).train, cfg)
    assert torch.allclose(r0["initial_v"], ref_v, atol=1e-4)
    assert torch.allclose(r0["initial_t"], ref_t, atol=1e-4)
    # rank 0 wrote the cache under OUTPUT_DIR; the checkpoint stores the prototypes as tensors
    assert len(list(ddp_run.glob("propot_initial_prototypes_*.pt"))) == 1
    state = torch.load(ddp_run / "model_final.pth", weights_only=True)["model"]
    assert torch.equal(state["prototypes.initial_v"], r0["initial_v"])
    assert bool(state["prototypes.initialized"])


def test_dumped_config_holds_the_propot_keys_and_no_other_method(ddp_run):
    """Base-Propot.yml imports its package through PLUGINS: the run's config.yaml has
    MODEL.PROPOT (with the keys of propot/config.py) and nothing of CPCL or CSDN."""
    dumped = yaml.safe_load((ddp_run / "config.yaml").read_text())
    assert "propot" in dumped["PLUGINS"]
    assert dumped["MODEL"]["PROPOT"]["DPP"]["NUM_CONTEXTS"] == 4
    assert dumped["MODEL"]["PROPOT"]["IPP"]["INTRA"]["ENABLED"] is True
    for other in ("CPCL", "CSDN"):
        assert other not in dumped and other not in dumped["MODEL"], other


def test_ddp_ranks_reload_initial_prototypes_from_the_cache(ddp_run, synthetic_root, tmp_path):
    """A second two-rank run with the first run's output folder as MODEL.PROPOT.INIT.CACHE_DIR:
    rank 0 reads the cache, both ranks get its tensors, nothing is extracted or rewritten."""
    out = tmp_path / "again"
    cache = sorted(ddp_run.glob("propot_initial_prototypes_*.pt"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    _two_rank_run(synthetic_root, out, "MODEL.PROPOT.INIT.CACHE_DIR", str(ddp_run))
    first = torch.load(ddp_run / "propot_probe_rank0.pt", weights_only=True)
    r0, r1 = (torch.load(out / f"propot_probe_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["source"] == r1["source"] == "cache"
    for key in ("initial_v", "initial_t"):
        assert torch.equal(r0[key], r1[key]) and torch.equal(r0[key], first[key]), key
    assert cache[0].stat().st_mtime_ns == stamp
    assert not list(out.glob("propot_initial_prototypes_*.pt"))


def test_eval_without_prototype_tensors_gives_the_training_metrics(
    ddp_run, synthetic_root, tmp_path
):
    ckpt = torch.load(ddp_run / "model_final.pth", weights_only=True)
    stripped = {k: v for k, v in ckpt["model"].items() if not k.startswith("prototypes.")}
    assert len(stripped) < len(ckpt["model"])
    path = tmp_path / "encoders_only.pth"
    torch.save({"model": stripped}, path)
    cfg = build_cfg(DEMO, tiny_opts(synthetic_root, str(tmp_path)) + ["MODEL.WEIGHTS", str(path)])
    cfg = ExtTrainer.auto_scale_hyperparams(cfg, ExtTrainer.num_train_classes(cfg))
    model = build_model(cfg)
    load_for_inference(model, str(path))
    res = ExtTrainer.test(cfg, model)
    final = json.loads((ddp_run / "results.json").read_text())
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert res[key] == pytest.approx(final[key], abs=1e-6), key


def _config_files():
    return sorted(
        str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yml") if p.name != "Base-Propot.yml"
    )


# What each config runs, written out from the README's Results and Ablations tables (never read
# from the MODEL.PROPOT switches the model reads): (prototypes, DPP, IPP calls, MLM, aggregation).
_FULL = (True, True, ["inter", "intra"], True, "APA")
EXPECTED_MODULES = {
    "cuhk.yml": _FULL,
    "icfg.yml": _FULL,
    "rstp.yml": _FULL,
    "demo.yml": (True, True, ["inter", "intra"], False, "APA"),  # Table 4 row 6
    "ablations/ipp_untied_blocks.yml": _FULL,
    "ablations/table4_0_baseline.yml": (False, False, [], False, None),
    "ablations/table4_1_inipt.yml": (True, False, [], False, "APA"),
    "ablations/table4_2_dpp.yml": (True, True, [], False, "APA"),
    "ablations/table4_3_ipp_intra.yml": (True, False, ["intra"], False, "APA"),
    "ablations/table4_4_ipp_inter.yml": (True, False, ["inter"], False, "APA"),
    "ablations/table4_5_ipp.yml": (True, False, ["inter", "intra"], False, "APA"),
    "ablations/table4_6_dpp_ipp.yml": (True, True, ["inter", "intra"], False, "APA"),
    "ablations/table4_7_full.yml": _FULL,
    "ablations/table5_apa.yml": _FULL,
    "ablations/table5_learned.yml": (True, True, ["inter", "intra"], True, "learned"),
    "ablations/table5_mean.yml": (True, True, ["inter", "intra"], True, "mean"),
    "ablations/table5_mlp.yml": (True, True, ["inter", "intra"], True, "mlp"),
    "ablations/table5_sum.yml": (True, True, ["inter", "intra"], True, "sum"),
}


def test_every_config_builds_and_trains_two_steps():
    """Each config with the tiny CPU model: the modules of its row (EXPECTED_MODULES) exist,
    the paper's learning rates are set, and two optimisation steps give finite losses and move
    the weights."""
    tiny = [
        "MODEL.DEVICE", "cpu", "MODEL.CLIP.NAME", "tiny-vit", "MODEL.CLIP.RANDOM_INIT", "True",
        "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "MODEL.HEADS.NUM_CLASSES", "6",
        "MODEL.T2I.MLM_HEADS", "2", "MODEL.T2I.MLM_DEPTH", "1", "MODEL.PROPOT.IPP.NUM_BLOCKS", "1",
        "SOLVER.AMP.ENABLED", "False",
    ]  # fmt: skip
    tok = ClipTokenizer()
    ids = tok(["a woman wearing a red coat and black shoes"] * 8)
    gen = torch.Generator().manual_seed(0)
    mlm = [mask_tokens(row, gen, prob=0.3) for row in ids]
    batch = {
        "images": torch.rand(8, 3, 64, 32, generator=gen) * 255,
        "caption_ids": ids,
        "targets": torch.tensor([0, 0, 1, 2, 3, 3, 4, 5]),
        "mlm_ids": torch.stack([m[0] for m in mlm]),
        "mlm_labels": torch.stack([m[1] for m in mlm]),
    }
    files = _config_files()
    assert sorted(EXPECTED_MODULES) == files
    for name in files:
        cfg = build_cfg(str(CONFIGS / name), tiny)
        torch.manual_seed(0)
        model = build_model(cfg)
        enabled, dpp, calls, mlm, aggregation = EXPECTED_MODULES[name]
        assert hasattr(model, "prototypes") == enabled, name
        if enabled:
            assert (model.prototypes.dpp is not None) == dpp, name
            ipp = model.prototypes.ipp
            assert ([] if ipp is None else sorted({c.split("_")[0] for c in ipp.calls})) == calls
            want = PROTOTYPE_AGGREGATIONS[aggregation]
            assert type(model.prototypes.aggregation) is want, name
            model.prototypes.set_initial(torch.randn(6, 64), torch.randn(6, 64))
        opt = build_optimizer(cfg, model)
        if name != "demo.yml":  # the paper's rates: 1e-5 encoders, 1e-4 new modules
            lrs = {g["group_name"]: g["base_lr"] for g in opt.param_groups}
            assert lrs["pretrained/weight"] == pytest.approx(1e-5), name
            assert lrs["new/weight"] == pytest.approx(1e-4), name
        before = {k: v.clone() for k, v in model.named_parameters()}
        for _ in range(2):
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), (name, losses)
            opt.zero_grad()
            total.backward()
            opt.step()
        assert ("loss_p2i" in losses) == enabled, name
        assert ("loss_mlm" in losses) == mlm, name
        moved = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
        assert any(k.startswith("backbone.") for k in moved), name
        if enabled and (dpp or calls):
            assert any(k.startswith("prototypes.") for k in moved), name


def test_benchmark_script_runs_on_cpu():
    """tools/benchmark_propot.py end to end on a tiny CPU setting (a smoke test, not timed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = ["--iters", "1", "--rounds", "1", "--warmup", "1", "--num-ids", "40", "--batch", "8"]
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "benchmark_propot.py"), *args],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split("  ")[0] for line in proc.stdout.splitlines()}
    assert {"baseline", "propot", "propot (all N prototypes)"} <= rows, proc.stdout
    assert "Propot / baseline step time:" in proc.stdout and "fp32" in proc.stdout
    assert "peak" not in proc.stdout  # peak memory is reported on CUDA only


# The reduced demo comparison below at SEED 1-5 (Propot - baseline; measured, 6 epochs):
# R1 +3.44 / -4.06 / -0.94 / +2.50 / -3.44, mAP +1.98 / -3.26 / -0.74 / +0.45 / -1.78.
# Mean gap R1 -0.50, mAP -0.67. L_p2i (weighted, metrics.json) fell by 0.100 / 0.151 / 0.083 /
# 0.079 / 0.130 from the first to the last logged iteration.
P2I_MIN_DROP = 0.03  # below half the smallest measured drop
GAP_FLOOR = {"R1": -6.0, "mAP": -5.0}  # below the worst measured seed (-4.06 / -3.26)


def _metric_rows(out_dir) -> list:
    return [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]


def test_demo_learns_and_propot_changes_the_baseline(tmp_path):
    """Propot's demo recipe and the baseline's on the same synthetic data and budget (reduced:
    100 training ids, 6 epochs, SEED 1), trained side by side.

    The demo's "Propot" is Table 4 row 6 (DPP + IPP + APA + L_p2i, no MLM), compared with row 0:
    MLM is left out of both demo recipes because its 49408-way head dominates the CPU time of the
    tiny model, so both sides differ only by the prototype modules and L_p2i (checked in the fast
    tier by tests/test_propot_demo_comparison.py, with L_p2i's gradient on both encoders).

    "Propot is not worse than the baseline" cannot fail with Propot switched off (the two runs
    are then the same computation, with identical numbers), and at this budget the seed spread
    is larger than the gap (above), so neither a sign nor a size of the gap is asserted. What is:
    Propot trained L_p2i (logged on every training row, none in the baseline's, and falling by a
    measured margin), the two runs end with different metrics, both learn far above chance, and
    Propot stays within the seed spread of the baseline (a collapse fails)."""
    root = tmp_path / "data"
    num_test_ids = 40
    write_synthetic_dataset(
        str(root), "cuhk", num_ids=150, images_per_id=4, captions_per_image=2, seed=1,
        split_counts=(100, 10, num_test_ids),
    )  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    procs = {}
    for method, cfg in (("baseline", REPO / "configs" / "Baseline" / "demo.yml"), ("propot", DEMO)):
        args = [
            "--config-file", str(cfg), "DATASETS.ROOT", str(root),
            "OUTPUT_DIR", str(tmp_path / method), "SOLVER.MAX_EPOCH", "6", "TEST.EVAL_PERIOD", "6",
            "SOLVER.CHECKPOINT_PERIOD", "6", "DATALOADER.NUM_WORKERS", "0", "SEED", "1",
        ]  # fmt: skip
        procs[method] = subprocess.Popen(
            [sys.executable, str(TOOLS / "train_net.py"), *args],
            cwd=str(REPO),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    results = {}
    for method, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-5000:]
        results[method] = json.loads((tmp_path / method / "results.json").read_text())
    base, prop = results["baseline"], results["propot"]
    chance = 100.0 / num_test_ids
    print(
        f"baseline R1 {base['R1']:.2f} mAP {base['mAP']:.2f} | propot R1 {prop['R1']:.2f} "
        f"mAP {prop['mAP']:.2f} (chance R1 {chance:.2f})"
    )
    # Propot trained its identity-level term; the baseline has none
    train_rows = [r for r in _metric_rows(tmp_path / "propot") if "total_loss" in r]
    p2i = [r.get("loss_p2i") for r in train_rows]
    assert len(p2i) >= 2 and all(x is not None and x > 0 for x in p2i), p2i
    assert p2i[0] - p2i[-1] >= P2I_MIN_DROP, p2i
    assert not any("loss_p2i" in r for r in _metric_rows(tmp_path / "baseline"))
    # Measured: baseline R1 9.38 / mAP 15.27, Propot R1 12.81 / mAP 17.25 (chance R1 2.50).
    assert (prop["R1"], prop["mAP"]) != (base["R1"], base["mAP"])
    for res in (base, prop):
        assert res["R1"] >= 3 * chance and res["mAP"] >= 10.0, res
    for key, floor in GAP_FLOOR.items():
        assert prop[key] - base[key] >= floor, (key, prop[key], base[key])
