"""CSDN through tools/train_net.py: the demo recipe learns synthetic visible-infrared data far
above chance; a run interrupted inside and across phases resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from csdn import CSDNPhasedTrainer
from fastreid_ext.data.vi import write_synthetic_sysu
from fastreid_ext.engine.checkpoint import load_for_inference
from fastreid_ext.engine.setup import build_cfg

from .conftest import REPO, run_train_net

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "CSDN" / "demo.yml")
NUM_TEST_IDS = 40
PHASE_KEY = "hook_CSDNPhaseHook"  # the phase hook's checkpointed state


@pytest.fixture(scope="module")
def learn_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("csdn_learn"))
    counts = (40, 8, NUM_TEST_IDS)
    write_synthetic_sysu(root, 88, 3, seed=1, image_size=(64, 32), split_counts=counts)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("csdn_tiny"))
    write_synthetic_sysu(
        root,
        num_ids=14,
        images_per_camera=2,
        seed=2,
        image_size=(32, 16),
        split_counts=(8, 2, 4),
        camera_probability=0.5,
    )
    return root


def test_demo_recipe_learns_far_above_chance(learn_root, tmp_path):
    out = tmp_path / "learn"
    shorter = "MODEL.CSDN.PHASE1.EPOCHS 1 SOLVER.MAX_EPOCH 8 SOLVER.STEPS [6] TEST.EVAL_PERIOD 8"
    run_train_net(
        ["--config-file", DEMO, "DATASETS.ROOT", learn_root, "OUTPUT_DIR", str(out)]
        + shorter.split()
    )
    res = json.loads((out / "results.json").read_text())
    # rank-k of a random ranking over distinct identities: k / number of gallery identities
    chance = 100.0 / NUM_TEST_IDS
    print(f"R1 {res['R1']:.2f} R10 {res['R10']:.2f} (chance {chance:.2f}), mAP {res['mAP']:.2f}")
    assert res["R1"] >= 3 * chance
    assert res["R10"] >= 1.8 * 10 * chance


def _opts(root: str, out: Path):
    """A 5-epoch run (prompt 1, fusion 2, image 2) on the tiny set, 8 pairs per batch."""
    opts = (
        "INPUT.SIZE_TRAIN [32,16] INPUT.SIZE_TEST [32,16] SOLVER.IMS_PER_BATCH 8 "
        "DATALOADER.NUM_INSTANCE 2 DATALOADER.NUM_WORKERS 0 MODEL.CSDN.PHASE1.EPOCHS 1 "
        "MODEL.CSDN.PHASE2.EPOCHS 2 MODEL.CSDN.PHASE1.IMS_PER_BATCH 8 "
        "MODEL.CSDN.PHASE2.IMS_PER_BATCH 16 SOLVER.MAX_EPOCH 2 SOLVER.STEPS [1] "
        "TEST.EVAL_PERIOD 1 SOLVER.CHECKPOINT_PERIOD 1 TEST.VI.TRIALS 2"
    )
    return ["DATASETS.ROOT", root, "OUTPUT_DIR", str(out)] + opts.split()


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_inside_and_across_phases_matches_uninterrupted(tiny_root, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    run_train_net(["--config-file", DEMO, *_opts(tiny_root, full)])
    # epochs: 0 prompt | 1, 2 fusion | 3, 4 image. Stop inside the fusion phase (on resume its
    # image bank comes back from the cache), then at its end (the resumed run starts the image
    # phase: new optimizer, text bank), then finish.
    for stop in ("2", "1", "0"):
        resume = ["--resume"] if stop != "2" else []
        run_train_net(
            [
                "--config-file",
                DEMO,
                *resume,
                *_opts(tiny_root, parts),
                "TRAINER.STOP_AFTER_EPOCHS",
                stop,
            ]
        )
        if stop == "2":
            ckpt = _load(parts / "model_0001.pth")
            assert ckpt[PHASE_KEY] == {"phase": 1, "name": "fusion"} and ckpt["epoch"] == 1
            assert not (parts / "model_final.pth").exists()
            # a fusion-phase checkpoint exists: the prompt-phase bank cache is gone
            banks = sorted(p.name for p in parts.glob("csdn_bank_phase*.pt"))
            assert banks == ["csdn_bank_phase2.pt"]
    assert not list(full.glob("csdn_bank_*")) and not list(parts.glob("csdn_bank_*"))
    a, b = _load(full / "model_final.pth"), _load(parts / "model_final.pth")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a[PHASE_KEY]["name"] == "image" and b[PHASE_KEY]["name"] == "image"
    # each phase changed its own modules only
    after = [_load(full / f"model_{e:04d}.pth")["model"] for e in (0, 2)] + [a["model"]]
    prompt, fusion, stem = (
        "prompt_learners.1.cls_ctx",
        "fusion.common.weight",
        "image_encoder.stems.1.0.weight",
    )
    assert torch.equal(after[0][prompt], after[2][prompt])
    assert not torch.equal(after[0][fusion], after[1][fusion])
    assert torch.equal(after[1][fusion], after[2][fusion])
    assert torch.equal(after[0][stem], after[1][stem]) and not torch.equal(
        after[1][stem], after[2][stem]
    )
    assert float(after[1]["text_bank_visible"].abs().sum()) == 0.0
    assert float(after[2]["text_bank_visible"].abs().sum()) > 0.0
    res_full = json.loads((full / "results.json").read_text())
    assert res_full == json.loads((parts / "results.json").read_text())
    # eval-only path of train_net (in-process): inference modules only, text side optional
    ev = tmp_path / "eval"
    ev.mkdir()
    cfg = build_cfg(DEMO, _opts(tiny_root, ev))
    cfg = CSDNPhasedTrainer.auto_scale_hyperparams(cfg, CSDNPhasedTrainer.num_train_classes(cfg))
    model = CSDNPhasedTrainer.build_model(cfg)
    state = {k: v for k, v in a["model"].items() if not k.startswith(model.training_only_prefixes)}
    torch.save({"model": state}, ev / "inference_only.pth")
    load_for_inference(model, str(ev / "inference_only.pth"))
    res_eval = CSDNPhasedTrainer.test(cfg, model)
    for key in ("R1", "mAP", "mINP", "indoor-single/R1"):
        assert res_eval[key] == pytest.approx(res_full[key], abs=1e-9)
