"""Param groups, LR schedule formulas, epoch samplers, plugin config discovery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fastreid.config import get_cfg
from torch import nn

from fastreid_ext.config import add_fastreid_ext_config
from fastreid_ext.data.samplers import InferenceBatchSampler, RandomEpochBatchSampler
from fastreid_ext.solver import build_lr_schedule, build_optimizer, build_param_groups
from fastreid_ext.solver.schedule import LRSchedule


def _cfg():
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    return cfg


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_param_groups_pretrained_new_bias():
    cfg = _cfg()
    cfg.SOLVER.BASE_LR = 1e-5
    cfg.SOLVER.NEW_MODULE_LR_FACTOR = 10.0
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    cfg.SOLVER.WEIGHT_DECAY = 4e-5
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    groups = {g["group_name"]: g for g in build_param_groups(cfg, _Toy())}
    assert groups["pretrained/weight"]["lr"] == pytest.approx(1e-5)
    assert groups["pretrained/bias"]["lr"] == pytest.approx(2e-5)
    assert groups["new/weight"]["lr"] == pytest.approx(1e-4)
    # IRRA: a new module's bias gets BASE_LR * BIAS_LR_FACTOR (the bias factor replaces the
    # new-module factor), not both factors
    assert groups["new/bias"]["lr"] == pytest.approx(2e-5)
    assert groups["new/bias"]["weight_decay"] == 0.0
    assert groups["new/weight"]["weight_decay"] == pytest.approx(4e-5)
    names = sum((g["param_names"] for g in groups.values()), [])
    assert sorted(names) == ["backbone.bias", "backbone.weight", "head.bias", "head.weight"]


def test_optimizer_step_changes_trainable_only():
    cfg = _cfg()
    cfg.SOLVER.OPT = "Adam"
    cfg.SOLVER.EPS = 1e-3
    model = _Toy()
    opt = build_optimizer(cfg, model)
    assert opt.param_groups[0]["eps"] == 1e-3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = (
        model.head(model.backbone(torch.randn(4, 3))).sum() + model.frozen(torch.ones(1, 3)).sum()
    )
    loss.backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]) == k.startswith("frozen."), k


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_fused_adam_matches_the_default_update(name):
    """SOLVER.FUSED builds torch's fused kernel, and its steps equal the default implementation."""
    models, opts = [], []
    for fused in (True, False):
        cfg = _cfg()
        cfg.SOLVER.OPT, cfg.SOLVER.FUSED = name, fused
        cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = 1e-2, 1e-2
        torch.manual_seed(0)
        models.append(_Toy())
        opts.append(build_optimizer(cfg, models[-1]))
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    x = torch.randn(4, 3)
    for _ in range(3):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model.head(model.backbone(x)).square().sum().backward()
            opt.step()
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    torch.manual_seed(0)
    assert not torch.allclose(models[0].head.weight, _Toy().head.weight, atol=1e-3)  # it moved


def test_unknown_optimizer_is_named():
    cfg = _cfg()
    cfg.SOLVER.OPT = "Lamb"
    with pytest.raises(KeyError, match="SOLVER.OPT"):
        build_optimizer(cfg, _Toy())


def test_irra_schedule_per_epoch():
    """IRRA: 5 linear warm-up epochs from 0.1, then lr * 0.5 (1 + cos(pi (e - 5) / 55))."""
    s = LRSchedule(max_epoch=60, warmup_epochs=5, warmup_factor=0.1, step="epoch")
    for e in range(60):
        if e < 5:
            expected = 0.1 * (1 - e / 5) + e / 5
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (e - 5) / 55))
        assert s.factor(s.progress(e, 7, 10)) == pytest.approx(expected)
    it = LRSchedule(max_epoch=10, warmup_epochs=1, step="iter")
    assert it.progress(2, 5, 10) == 2.5
    assert it.factor(0.5) == pytest.approx(0.55)


def test_schedule_from_config_multistep_and_eta_min():
    cfg = _cfg()
    cfg.SOLVER.SCHED = "MultiStepLR"
    cfg.SOLVER.STEPS = [3, 6]
    cfg.SOLVER.GAMMA = 0.5
    cfg.SOLVER.WARMUP_EPOCHS = 0
    s = build_lr_schedule(cfg)
    assert [s.factor(e) for e in (0, 3, 5, 6)] == [1.0, 0.5, 0.5, 0.25]
    cfg.SOLVER.SCHED = "CosineAnnealingLR"
    cfg.SOLVER.BASE_LR, cfg.SOLVER.ETA_MIN_LR, cfg.SOLVER.MAX_EPOCH = 1e-3, 1e-4, 10
    s = build_lr_schedule(cfg)
    assert s.factor(10) == pytest.approx(0.1) and s.factor(0) == pytest.approx(1.0)
    # warm-up keys (not the defaults 0.1 / "epoch"): factor 0.25 -> 1 over 2 epochs, per iteration
    cfg.SOLVER.WARMUP_EPOCHS, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.SCHED_STEP = 2, 0.25, "iter"
    s = build_lr_schedule(cfg)
    assert s.progress(1, 5, 10) == 1.5
    assert [s.factor(p) for p in (0.0, 1.0, 1.5)] == pytest.approx([0.25, 0.625, 0.8125])
    cfg.SOLVER.SCHED = "Poly"
    with pytest.raises(KeyError, match="SOLVER.SCHED"):
        build_lr_schedule(cfg)


def test_random_epoch_sampler_deterministic_and_rank_sharded():
    def batches(rank, world, epoch):
        s = RandomEpochBatchSampler(103, 8, seed=3, rank=rank, world_size=world)
        s.set_epoch(epoch)
        return list(s)

    one = batches(0, 1, epoch=2)
    assert len(one) == 103 // 8 and all(len(b) == 8 for b in one)
    assert one == batches(0, 1, epoch=2)  # same (seed, epoch) -> same order
    assert one != batches(0, 1, epoch=3)
    flat = sum(one, [])
    assert len(set(flat)) == len(flat)
    r0, r1 = batches(0, 2, 2), batches(1, 2, 2)
    # the two ranks split each global batch of the single-process run
    assert [a + b for a, b in zip(r0, r1)] == one


def test_sampler_errors():
    with pytest.raises(ValueError, match="divisible"):
        RandomEpochBatchSampler(100, 9, seed=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        RandomEpochBatchSampler(5, 8, seed=0)


def test_inference_sampler_covers_everything_once():
    seen = []
    for rank in range(3):
        for batch in InferenceBatchSampler(10, 3, rank, 3):
            seen.extend(batch)
    assert seen == list(range(10))
    assert np.sum([len(InferenceBatchSampler(10, 3, r, 3)) for r in range(3)]) == 5
