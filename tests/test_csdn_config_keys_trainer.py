"""The ``MODEL.CSDN`` keys read by the trainer, observed where they act in an in-process
``CSDNPhasedTrainer`` on a tiny synthetic SYSU-MM01 tree (no training step, no subprocess).

One walk over every epoch of a run (``_walk``) calls the phase hook's ``before_epoch`` and the LR
hook's ``before_step`` as the training loop does, and records what the run would train with:
the phase of each epoch, each epoch's LR, each phase's optimizer group, loader batches and
image-bank forward batches, the BatchNorm statistics and the phase-3 text bank. The walk uses
``PHASE_VALUES``: every key of ``PHASE1`` differs from its ``PHASE2`` twin, from its default and
(for the integers) from the neighbouring values, so a key that is ignored, read from its twin or
off by one changes a recorded value. The model-level keys are in test_csdn_config_keys.py.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest
import torch
from fastreid.utils.events import EventStorage
from torch import nn

import csdn.trainer
from csdn.banks import mode
from csdn.trainer import CSDNPhasedTrainer
from fastreid_ext.config import ConfigValueError
from fastreid_ext.data.vi import build_vi_sampler, write_synthetic_sysu
from fastreid_ext.engine.distributed import unwrap_model
from fastreid_ext.engine.hooks import LRScheduleHook
from fastreid_ext.engine.setup import build_cfg

from .conftest import REPO

DEMO = str(REPO / "configs" / "CSDN" / "demo.yml")
PHASE3_EPOCHS = 5  # SOLVER.MAX_EPOCH: differs from every phase-1/2 integer below
# Non-default values; PHASE1 and PHASE2 never share one (their defaults are equal).
PHASE_VALUES: Dict[str, Dict[str, float]] = {
    "PHASE1": {"EPOCHS": 4, "IMS_PER_BATCH": 6, "BASE_LR": 2e-3, "WEIGHT_DECAY": 3e-3,
               "WARMUP_EPOCHS": 2, "WARMUP_LR_INIT": 1e-4, "ETA_MIN_LR": 5e-4},
    "PHASE2": {"EPOCHS": 3, "IMS_PER_BATCH": 10, "BASE_LR": 4e-3, "WEIGHT_DECAY": 7e-3,
               "WARMUP_EPOCHS": 1, "WARMUP_LR_INIT": 3e-4, "ETA_MIN_LR": 7e-4},
}  # fmt: skip
PHASE_KEYS = tuple(PHASE_VALUES["PHASE1"])
TRAINER_KEYS = tuple(f"{p}.{k}" for p in PHASE_VALUES for k in PHASE_KEYS) + (
    "DDP.SYNC_BN",
    "QUIRKS.FUSION_BANK_TRAIN_MODE",
    "QUIRKS.TEXT_BANK_TRAIN_MODE",
)


@pytest.fixture(scope="module")
def vi_root(tmp_path_factory) -> str:
    """10 training identities (train + val), 56 sampled pairs per epoch at 8 pairs a batch."""
    root = str(tmp_path_factory.mktemp("csdn_keys"))
    write_synthetic_sysu(root, num_ids=14, images_per_camera=2, seed=2, image_size=(32, 16),
                         split_counts=(8, 2, 4), camera_probability=0.5)  # fmt: skip
    return root


def _opts(root: str, out: str, *extra: str) -> List[str]:
    """The run's overrides with ``PHASE_VALUES`` and ``extra``; creates ``out``."""
    os.makedirs(out, exist_ok=True)
    opts = ["DATASETS.ROOT", root, "OUTPUT_DIR", out, "INPUT.SIZE_TRAIN", "[32,16]",
            "INPUT.SIZE_TEST", "[32,16]", "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE",
            "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_EPOCH", str(PHASE3_EPOCHS),
            "TEST.VI.TRIALS", "1"]  # fmt: skip
    for phase, values in PHASE_VALUES.items():
        for key, value in values.items():
            opts += [f"MODEL.CSDN.{phase}.{key}", str(value)]
    return opts + list(extra)


def _walk(root: str, out: str, *extra: str) -> Dict[str, Any]:
    """Every epoch's ``before_epoch`` (phase hook) and first ``before_step`` (LR hook) of a
    trainer with ``_opts``; what the run would train with, per epoch and per phase."""
    torch.manual_seed(0)
    trainer = CSDNPhasedTrainer(build_cfg(DEMO, _opts(root, out, *extra)))
    module = unwrap_model(trainer.model)
    lr_hook = next(h for h in trainer._hooks if isinstance(h, LRScheduleHook))
    forwarded: List[int] = []  # images per image-bank forward pass
    encode = module.encode_proj
    module.encode_proj = lambda x, m: (forwarded.append(int(x.shape[0])), encode(x, m))[1]
    stem_bn = module.image_encoder.stems[0][1]
    rec: Dict[str, Any] = {"max_iter": trainer.max_iter, "max_epoch": trainer.max_epoch,
                           "phase": [], "lr": [], "per_phase": {}}  # fmt: skip
    trainer.iter = trainer.epoch_start_iter = 0
    with EventStorage(0) as trainer.storage:
        for epoch in range(trainer.max_epoch):
            trainer.epoch = epoch
            forwarded.clear()
            stats = stem_bn.running_mean.clone()
            trainer.phase_hook.before_epoch()
            phase = trainer.phase_hook.phase
            if phase not in rec["per_phase"]:
                groups = trainer.optimizer.param_groups
                rec["per_phase"][phase] = {
                    "groups": [(g["base_lr"], g["weight_decay"]) for g in groups],
                    "iters_per_epoch": trainer.iters_per_epoch,
                    "bank_forward": list(forwarded),
                    "bn_stats_changed": not torch.equal(stats, stem_bn.running_mean),
                    "batches": [len(b["targets"]) for b in trainer.data_loader]
                    if phase < 2
                    else None,
                }
            lr_hook.before_step()
            rec["lr"].append(trainer.optimizer.param_groups[0]["lr"])
            rec["phase"].append(phase)
    sampler = build_vi_sampler(trainer.cfg, trainer.image_train_set)  # one pass of P x K pairs
    rec["sampled_pairs"] = len(sampler) * trainer.cfg.SOLVER.IMS_PER_BATCH
    rec["text_bank"] = (module.text_bank_visible.clone(), module.text_bank_infrared.clone())
    with torch.no_grad(), mode(module, False):  # eval mode: SII without dropout
        rec["eval_texts"] = module.text_targets(torch.arange(module.num_classes))
    return rec


@pytest.fixture(scope="module")
def walk(vi_root, tmp_path_factory) -> Dict[str, Any]:
    return _walk(vi_root, str(tmp_path_factory.mktemp("walk")))


def timm_lr(v: Dict[str, float], t: int) -> float:
    """timm's CosineLRScheduler (the authors' phases 1-2), written out: linear warm-up from
    WARMUP_LR_INIT for t < WARMUP_EPOCHS, then ETA_MIN + (BASE - ETA_MIN)(1 + cos(pi t / EPOCHS))/2."""
    if t < v["WARMUP_EPOCHS"]:
        return v["WARMUP_LR_INIT"] + t * (v["BASE_LR"] - v["WARMUP_LR_INIT"]) / v["WARMUP_EPOCHS"]
    cos = 1 + math.cos(math.pi * t / v["EPOCHS"])
    return v["ETA_MIN_LR"] + 0.5 * (v["BASE_LR"] - v["ETA_MIN_LR"]) * cos


def _phase_lrs(v: Dict[str, float], epochs: int = 0) -> List[float]:
    """The LR of the first ``epochs`` (default: all ``v["EPOCHS"]``) epochs of a phase."""
    return [timm_lr(v, t) for t in range(epochs or int(v["EPOCHS"]))]


def _twin(phase: str) -> str:
    return "PHASE2" if phase == "PHASE1" else "PHASE1"


@pytest.mark.parametrize("phase", list(PHASE_VALUES))
def test_phase_epochs(walk, phase):
    """``PHASE<k>.EPOCHS``: the epochs the hook spends in the phase, the run length, the
    iteration budget and the period of the phase's cosine."""
    e1, e2 = PHASE_VALUES["PHASE1"]["EPOCHS"], PHASE_VALUES["PHASE2"]["EPOCHS"]
    assert walk["phase"] == [0] * e1 + [1] * e2 + [2] * PHASE3_EPOCHS
    assert walk["max_epoch"] == e1 + e2 + PHASE3_EPOCHS
    ipe = {k: p["iters_per_epoch"] for k, p in walk["per_phase"].items()}
    assert walk["max_iter"] == e1 * ipe[0] + e2 * ipe[1] + PHASE3_EPOCHS * ipe[2]
    k, v = int(phase[-1]) - 1, PHASE_VALUES[phase]
    lrs = [lr for p, lr in zip(walk["phase"], walk["lr"]) if p == k]
    assert lrs == pytest.approx(_phase_lrs(v), rel=1e-9)
    for period in (v["EPOCHS"] - 1, v["EPOCHS"] + 1):  # the cosine's period tells
        assert lrs != pytest.approx(_phase_lrs({**v, "EPOCHS": period}, len(lrs)), rel=1e-6)


@pytest.mark.parametrize("phase", list(PHASE_VALUES))
def test_phase_ims_per_batch(walk, phase):
    """``PHASE<k>.IMS_PER_BATCH``: the batch of the phase's bank loader, hence the run's iteration
    budget; PHASE1's also batches the forward passes of both image banks (visible and infrared,
    each its own pass)."""
    b1, b2 = PHASE_VALUES["PHASE1"]["IMS_PER_BATCH"], PHASE_VALUES["PHASE2"]["IMS_PER_BATCH"]
    p1, p2 = walk["per_phase"][0], walk["per_phase"][1]
    pairs = walk["sampled_pairs"] // b1 * b1  # one sampler pass cut to PHASE1 batches
    assert p1["bank_forward"] == [b1] * (2 * pairs // b1)
    assert p2["bank_forward"] == [b1] * (2 * pairs // b1)
    assert p1["batches"] == [b1] * (pairs // b1) and p1["iters_per_epoch"] == pairs // b1
    assert p2["batches"] == [b2] * (2 * pairs // b2)  # both modalities' features pooled
    assert p2["iters_per_epoch"] == 2 * pairs // b2
    e1, e2 = PHASE_VALUES["PHASE1"]["EPOCHS"], PHASE_VALUES["PHASE2"]["EPOCHS"]
    phase3 = PHASE3_EPOCHS * walk["per_phase"][2]["iters_per_epoch"]
    assert walk["max_iter"] == e1 * (pairs // b1) + e2 * (2 * pairs // b2) + phase3


@pytest.mark.parametrize("key", ["BASE_LR", "WEIGHT_DECAY"])
@pytest.mark.parametrize("phase", list(PHASE_VALUES))
def test_phase_optimizer_keys(walk, phase, key):
    """``PHASE<k>.BASE_LR`` / ``WEIGHT_DECAY``: the phase's Adam group (one group); BASE_LR also
    scales every LR of the phase's schedule."""
    k, v = int(phase[-1]) - 1, PHASE_VALUES[phase]
    assert walk["per_phase"][k]["groups"] == [(v["BASE_LR"], v["WEIGHT_DECAY"])]
    lrs = [lr for p, lr in zip(walk["phase"], walk["lr"]) if p == k]
    assert lrs == pytest.approx(_phase_lrs(v), rel=1e-9)
    assert v[key] != PHASE_VALUES[_twin(phase)][key]


@pytest.mark.parametrize("key", ["WARMUP_EPOCHS", "WARMUP_LR_INIT", "ETA_MIN_LR"])
@pytest.mark.parametrize("phase", list(PHASE_VALUES))
def test_phase_schedule_keys(walk, phase, key):
    """``PHASE<k>.WARMUP_EPOCHS`` / ``WARMUP_LR_INIT`` / ``ETA_MIN_LR``: the LR the LR hook sets
    at every epoch of the phase is timm's cosine with these values, and it would not be with the
    default, the twin phase's value or (warm-up length) one epoch more or less."""
    k, v = int(phase[-1]) - 1, PHASE_VALUES[phase]
    lrs = [lr for p, lr in zip(walk["phase"], walk["lr"]) if p == k]
    assert lrs == pytest.approx(_phase_lrs(v), rel=1e-9)
    defaults = {"WARMUP_EPOCHS": 5, "WARMUP_LR_INIT": 1e-5, "ETA_MIN_LR": 1e-6}
    others = [defaults[key], PHASE_VALUES[_twin(phase)][key]]
    if key == "WARMUP_EPOCHS":
        others += [v[key] - 1, v[key] + 1]
    for other in others:
        assert lrs != pytest.approx(_phase_lrs({**v, key: other}), rel=1e-6), other


@pytest.mark.parametrize("train_mode", [True, False])
def test_fusion_bank_train_mode(vi_root, tmp_path, train_mode):
    """``QUIRKS.FUSION_BANK_TRAIN_MODE``: the phase-2 image bank pass runs the encoder in train
    mode (its BatchNorm statistics move) or in eval mode; the phase-1 pass never moves them."""
    rec = _walk(vi_root, str(tmp_path), "MODEL.CSDN.QUIRKS.FUSION_BANK_TRAIN_MODE", str(train_mode))
    assert rec["per_phase"][0]["bn_stats_changed"] is False
    assert rec["per_phase"][1]["bn_stats_changed"] is train_mode


@pytest.mark.parametrize("train_mode", [True, False])
def test_text_bank_train_mode(vi_root, tmp_path, train_mode):
    """``QUIRKS.TEXT_BANK_TRAIN_MODE``: the phase-3 text bank is drawn with SII's dropout on
    (it differs from the eval-mode fused texts) or off (it equals them)."""
    rec = _walk(vi_root, str(tmp_path), "MODEL.CSDN.QUIRKS.TEXT_BANK_TRAIN_MODE", str(train_mode))
    for bank, want in zip(rec["text_bank"], rec["eval_texts"]):
        if train_mode:
            assert float((bank - want).abs().max()) > 1e-3
        else:
            torch.testing.assert_close(bank, want, rtol=1e-5, atol=1e-6)


def test_sync_bn(vi_root, tmp_path, monkeypatch):
    """``DDP.SYNC_BN``: with two processes the trainer converts the image side's BatchNorm
    (CUDA only: on CPU it stops naming the key); False leaves plain BatchNorm."""
    monkeypatch.setattr(csdn.trainer, "comm", SimpleNamespace(get_world_size=lambda: 2))
    with pytest.raises(ConfigValueError, match="SyncBatchNorm synchronises CUDA") as err:
        CSDNPhasedTrainer(build_cfg(DEMO, _opts(vi_root, str(tmp_path / "on"),
                                                "MODEL.CSDN.DDP.SYNC_BN", "True")))  # fmt: skip
    assert err.value.key == "MODEL.CSDN.DDP.SYNC_BN"
    off = _opts(vi_root, str(tmp_path / "off"), "MODEL.CSDN.DDP.SYNC_BN", "False")
    model = unwrap_model(CSDNPhasedTrainer(build_cfg(DEMO, off)).model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.image_encoder.modules()) == 22
