"""Wiring of the shared trainer that an exact ``--resume`` alone does not prove.

* Epoch dependence: consecutive epochs see different batch orders and different augmentations,
  and a resumed epoch sees exactly the batches of the uninterrupted run.
* fp16 AMP: the GradScaler state is checkpointed and restored by ``--resume`` (tested on the CPU
  with ``torch.amp.GradScaler("cpu")`` standing in for the CUDA scaler).
* Two datasets at once: identity and image-id offsets of ``DATASETS.NAMES``, one
  ``<name>/<metric>`` result per ``DATASETS.TESTS`` entry, ``model_best.pth`` on the first one.
* Config values that must reach the loop: the LR hook's iteration within the epoch, the
  checkpoint and evaluation periods, the per-(seed, epoch, rank) RNG seed, gradient clipping.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import pytest
import torch
from fastreid.utils.events import EventStorage

import fastreid_ext.engine.trainer as trainer_mod
from fastreid_ext.data.synthetic import write_synthetic_dataset
from fastreid_ext.data.text_image import load_text_image_dataset, read_image
from fastreid_ext.data.transforms import build_image_transforms
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.hooks import EpochEndHook, LRScheduleHook
from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.solver import LRSchedule

from .conftest import REPO, run_train_net, tiny_opts

DEMO = str(REPO / "configs" / "Baseline" / "demo.yml")
# flips only (no pad/crop, no erasing): an augmented image is its test image or its mirror
FLIP_ONLY = [
    "INPUT.FLIP.ENABLED",
    "True",
    "INPUT.FLIP.PROB",
    "0.5",
    "INPUT.PADDING.ENABLED",
    "False",
    "INPUT.REA.ENABLED",
    "False",
]


def _cfg(root: str, out: str, epochs: int, extra: List[str] = ()):
    os.makedirs(out, exist_ok=True)
    cfg = build_cfg(
        DEMO,
        tiny_opts(root, out, epochs=epochs)
        + ["DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", *extra],
    )
    cfg.freeze()
    return cfg


def _record_batches(trainer: ExtTrainer) -> Dict[int, List[dict]]:
    """{epoch: [training batch, ...]} as the model receives them (a forward pre-hook)."""
    rec: Dict[int, List[dict]] = {}

    def pre(module, args):
        if module.training:
            batch = args[0]
            rec.setdefault(trainer.epoch, []).append(
                {
                    "indices": batch["indices"].tolist(),
                    "image_ids": batch["image_ids"].tolist(),
                    "images": batch["images"].detach().clone(),
                }
            )

    trainer.model.register_forward_pre_hook(pre)
    return rec


# ---------------------------------------------------------------------------- epoch dependence
def _flip_bits(trainer: ExtTrainer, batches: List[dict]) -> Dict[int, int]:
    """{dataset index: 1 if its image was mirrored, else 0} over the batches of one epoch."""
    test_tf = build_image_transforms(trainer.cfg, is_train=False)
    cache: Dict[int, torch.Tensor] = {}
    bits: Dict[int, int] = {}
    for batch in batches:
        for idx, img in zip(batch["indices"], batch["images"]):
            if idx not in cache:
                cache[idx] = test_tf(read_image(trainer.train_set.pairs[idx].img_path))
            plain = cache[idx]
            if torch.equal(img, plain):
                bits[idx] = 0
            elif torch.equal(img, torch.flip(plain, dims=[-1])):
                bits[idx] = 1
            else:
                raise AssertionError(f"sample {idx}: neither the test image nor its mirror")
    return bits


def _assert_same_optimizer_state(a: dict, b: dict) -> None:
    """Equal per-parameter optimizer states (every tensor bit for bit), and not empty."""
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
    for k, state in b["state"].items():
        assert state.keys() == a["state"][k].keys(), k
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(a["state"][k][name]), torch.as_tensor(value))


def test_epochs_differ_and_resumed_epoch_matches(synthetic_root, tmp_path):
    """Removing the sampler's ``set_epoch`` (same order every epoch) or the epoch from the RNG
    seed (same augmentation draws every epoch) fails here, although ``--resume`` stays exact."""
    full = ExtTrainer(_cfg(synthetic_root, str(tmp_path / "full"), 2, FLIP_ONLY))
    full_rec = _record_batches(full)
    full.train()
    assert sorted(full_rec) == [0, 1]
    e0, e1 = full_rec[0], full_rec[1]
    assert len(e0) == len(e1) == full.iters_per_epoch

    # different batch order in consecutive epochs (the sampler follows the epoch)
    order0 = [i for b in e0 for i in b["indices"]]
    order1 = [i for b in e1 for i in b["indices"]]
    assert order0 != order1
    assert [b["image_ids"] for b in e0] != [b["image_ids"] for b in e1]

    # different augmentations: the flip decisions, by position in the epoch's stream of samples
    # (same RNG seed every epoch -> same decisions at the same positions) ...
    bits0, bits1 = _flip_bits(full, e0), _flip_bits(full, e1)
    assert 0 < sum(bits0.values()) < len(bits0)  # the augmentation is active
    pos0, pos1 = [bits0[i] for i in order0], [bits1[i] for i in order1]
    assert pos0 != pos1, "the same augmentation draws in epochs 0 and 1: is the seed per epoch?"
    # ... and by sample (the same image-caption pair is augmented differently in two epochs)
    both = set(bits0) & set(bits1)
    changed = sum(bits0[i] != bits1[i] for i in both)
    assert changed >= len(both) // 5, (changed, len(both))

    # a run stopped after epoch 0 and resumed sees the uninterrupted run's epoch-1 batches
    out = str(tmp_path / "resumed")
    first = ExtTrainer(_cfg(synthetic_root, out, 2, FLIP_ONLY + ["TRAINER.STOP_AFTER_EPOCHS", "1"]))
    first_rec = _record_batches(first)
    first.train()
    assert sorted(first_rec) == [0]
    # the checkpoint holds the optimizer state (Adam's moments), and --resume restores it
    ckpt = torch.load(os.path.join(out, "model_0000.pth"), map_location="cpu", weights_only=True)
    _assert_same_optimizer_state(ckpt["optimizer"], first.optimizer.state_dict())
    resumed = ExtTrainer(_cfg(synthetic_root, out, 2, FLIP_ONLY))
    resumed.resume_or_load(resume=True)
    assert resumed.start_epoch == 1
    _assert_same_optimizer_state(resumed.optimizer.state_dict(), ckpt["optimizer"])
    resumed_rec = _record_batches(resumed)
    resumed.train()
    assert sorted(resumed_rec) == [1]
    for a, b in zip(first_rec[0], e0):
        assert a["indices"] == b["indices"] and torch.equal(a["images"], b["images"])
    assert len(resumed_rec[1]) == len(e1)
    for a, b in zip(resumed_rec[1], e1):
        assert a["indices"] == b["indices"] and a["image_ids"] == b["image_ids"]
        assert torch.equal(a["images"], b["images"])


# ---------------------------------------------------------------------------- fp16 GradScaler
def _scaler_state(scaler) -> dict:
    return {k: float(v) for k, v in scaler.state_dict().items()}


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # autocast stays off
def test_fp16_grad_scaler_is_checkpointed_and_resumed(synthetic_root, tmp_path, monkeypatch):
    """AMP runs on CUDA only; here fp16 is forced on the CPU with a CPU GradScaler (autocast
    itself stays off), so the scaler's scale and growth tracker really evolve over the steps."""
    real_scaler = torch.amp.GradScaler
    # the pinned torch (requirements/lock.txt) has an enabled CPU GradScaler: never skip
    assert real_scaler("cpu").is_enabled(), "torch.amp.GradScaler('cpu') must be enabled"

    def cpu_scaler(device: str = "cuda", **kwargs):
        return real_scaler("cpu", init_scale=2.0**10, growth_interval=4)

    monkeypatch.setattr(torch.amp, "GradScaler", cpu_scaler)
    monkeypatch.setattr(trainer_mod, "resolve_amp_dtype", lambda *a, **k: torch.float16)
    amp = ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "fp16"]
    out = str(tmp_path / "fp16")

    first = ExtTrainer(_cfg(synthetic_root, out, 2, amp + ["TRAINER.STOP_AFTER_EPOCHS", "1"]))
    assert first._trainer.grad_scaler is not None
    n = first.iters_per_epoch
    assert n % 4 != 0, "the growth tracker should not be back at its default"
    first.train()
    after_first = _scaler_state(first._trainer.grad_scaler)
    # every step succeeded: the scale grew once per 4 steps
    assert after_first["scale"] == 2.0 ** (10 + n // 4) and after_first["_growth_tracker"] == n % 4

    ckpt = torch.load(os.path.join(out, "model_0000.pth"), map_location="cpu", weights_only=True)
    assert "grad_scaler" in ckpt, "the fp16 GradScaler state is not in the checkpoint"
    assert {k: float(v) for k, v in ckpt["grad_scaler"].items()} == after_first

    assert first.checkpointer.checkpointables["grad_scaler"] is first._trainer.grad_scaler

    resumed = ExtTrainer(_cfg(synthetic_root, out, 2, amp))
    fresh = _scaler_state(resumed._trainer.grad_scaler)
    assert fresh != after_first
    resumed.resume_or_load(resume=True)
    assert _scaler_state(resumed._trainer.grad_scaler) == after_first
    resumed.train()
    # the same scaler state as an uninterrupted run of 2 * n steps
    final = _scaler_state(resumed._trainer.grad_scaler)
    assert final["scale"] == 2.0 ** (10 + 2 * n // 4) and final["_growth_tracker"] == 2 * n % 4
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
    assert {k: float(v) for k, v in ckpt["grad_scaler"].items()} == final

    # a new optimizer gets a new scaler, and that one is checkpointed
    old = resumed._trainer.grad_scaler
    resumed.set_optimizer(resumed.optimizer)
    assert resumed._trainer.grad_scaler is not old
    assert resumed.checkpointer.checkpointables["grad_scaler"] is resumed._trainer.grad_scaler


# ---------------------------------------------------------------------------- two datasets
NAMES = ("CUHKPEDES", "RSTPReid")


@pytest.fixture(scope="module")
def two_dataset_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("two_datasets")
    common = dict(images_per_id=3, captions_per_image=2, image_size=(64, 32))
    write_synthetic_dataset(
        str(root), "cuhk", num_ids=20, seed=0, split_counts=(12, 4, 4), **common
    )
    write_synthetic_dataset(
        str(root), "rstp", num_ids=18, seed=1, split_counts=(10, 4, 4), **common
    )
    return str(root)


def _two_dataset_opts(root: str, out: str, epochs: int = 2) -> List[str]:
    names = "(" + ", ".join(f"'{n}'" for n in NAMES) + ",)"
    return tiny_opts(root, out, epochs=epochs) + [
        "DATASETS.NAMES",
        names,
        "DATASETS.TESTS",
        names,
        "DATALOADER.NUM_WORKERS",
        "0",
    ]


def test_two_training_datasets_get_disjoint_ids(two_dataset_root, tmp_path):
    cfg = build_cfg(DEMO, _two_dataset_opts(two_dataset_root, str(tmp_path)))
    parts = [load_text_image_dataset(n, cfg) for n in NAMES]
    train_set = ExtTrainer.build_train_set(cfg)
    pairs = train_set.pairs
    assert len(pairs) == sum(len(p.train) for p in parts)
    assert train_set.num_classes == sum(p.num_train_pids for p in parts) == 12 + 10
    # identities: contiguous over both datasets, the second one's after the first one's
    first_n = len(parts[0].train)
    assert {p.pid for p in pairs[:first_n]} == set(range(parts[0].num_train_pids))
    assert {p.pid for p in pairs[first_n:]} == set(
        range(parts[0].num_train_pids, train_set.num_classes)
    )
    # image ids: one per image file, no two images share one
    by_id: Dict[int, set] = {}
    for p in pairs:
        by_id.setdefault(p.image_id, set()).add(p.img_path)
    assert all(len(paths) == 1 for paths in by_id.values())
    assert sorted(by_id) == list(range(sum(p.num_train_images for p in parts)))
    # one identity per image, and the pid of each pair is its dataset's pid plus the offset
    for part, offset, chunk in (
        (parts[0], 0, pairs[:first_n]),
        (parts[1], parts[0].num_train_pids, pairs[first_n:]),
    ):
        assert [p.pid for p in chunk] == [q.pid + offset for q in part.train]
        assert [p.img_path for p in chunk] == [q.img_path for q in part.train]


def test_each_test_set_is_evaluated_on_its_own_data(two_dataset_root, tmp_path):
    """With two ``DATASETS.TESTS`` entries each one's results are exactly those of evaluating it
    alone, and ``model_best`` follows the first one's metric."""
    cfg = build_cfg(DEMO, _two_dataset_opts(two_dataset_root, str(tmp_path), epochs=1))
    cfg.freeze()
    trainer = ExtTrainer(cfg)
    assert trainer.epoch_end_hook.metric_key == f"{NAMES[0]}/metric"
    both = ExtTrainer.test(cfg, trainer.model)
    assert list(both) == list(NAMES)
    for name in NAMES:
        alone_cfg = cfg.clone()
        alone_cfg.defrost()
        alone_cfg.DATASETS.TESTS = (name,)
        alone = ExtTrainer.test(alone_cfg, trainer.model)
        assert dict(both[name]) == dict(alone), name
    # the two test sets hold different data, so their results differ
    assert dict(both[NAMES[0]]) != dict(both[NAMES[1]])


@pytest.mark.slow
def test_two_datasets_train_and_evaluate_end_to_end(two_dataset_root, tmp_path):
    out = tmp_path / "two"
    run_train_net(["--config-file", DEMO, *_two_dataset_opts(two_dataset_root, str(out))])
    with open(out / "results.json") as f:
        res = json.load(f)
    for name in NAMES:
        r = res[name]
        assert r["R1"] <= r["R5"] <= r["R10"] <= 100.0 and r["metric"] == r["R1"], name
    assert res[NAMES[0]] != res[NAMES[1]]  # each test set's own data
    # metrics.json: both test sets' flattened metrics at every evaluation (one per epoch)
    evals = []
    with open(out / "metrics.json") as f:
        for line in f:
            row = json.loads(line)
            if any(k.endswith("/metric") for k in row):
                evals.append(row)
    assert len(evals) == 2
    for row in evals:
        for name in NAMES:
            assert f"{name}/metric" in row and f"{name}/R1" in row, sorted(row)
    assert evals[-1][f"{NAMES[1]}/metric"] == pytest.approx(res[NAMES[1]]["metric"])
    # the best checkpoint follows the first test set's metric
    best = res["best"]
    key = f"{NAMES[0]}/metric"
    assert best["metric_key"] == key
    assert best["metric"] == pytest.approx(max(r[key] for r in evals))
    best_idx = [r[key] for r in evals].index(max(r[key] for r in evals))
    assert best["epoch"] == best_idx
    ckpt = torch.load(Path(out) / "model_best.pth", map_location="cpu", weights_only=True)
    assert ckpt["metric"] == pytest.approx(best["metric"]) and ckpt["epoch"] == best_idx


# ---------------------------------------------------------------------------- loop wiring
def test_lr_hook_uses_the_iteration_within_the_epoch():
    """LR = base_lr * factor(epoch + (iter - epoch_start_iter) / iters_per_epoch) (step "iter"),
    whatever the global iteration count of earlier epochs (which may have had other lengths)."""
    schedule = LRSchedule(max_epoch=4, warmup_epochs=1, warmup_factor=0.1, step="iter")
    group = {"base_lr": 2.0, "lr": 0.0}
    trainer = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[group]), iters_per_epoch=10)
    hook = LRScheduleHook(schedule)
    hook.trainer = trainer
    with EventStorage(0) as trainer.storage:
        # epoch 0 (warm-up), iteration 5 of 10: progress 0.5
        trainer.epoch, trainer.epoch_start_iter, trainer.iter = 0, 0, 5
        hook.before_step()
        assert group["lr"] == pytest.approx(2.0 * (0.1 * 0.5 + 0.5))
        # epoch 2 after epochs of 7 and 13 iterations: iteration 25 is the 5th of epoch 2
        trainer.epoch, trainer.epoch_start_iter, trainer.iter = 2, 20, 25
        hook.before_step()
        # progress 2.5: half-way through the cosine over epochs 1..4
        assert group["lr"] == pytest.approx(2.0 * 0.5 * (1 + np.cos(np.pi * 0.5)))
        assert trainer.storage.latest()["lr"][0] == group["lr"]


class _RecordingCheckpointer:
    def __init__(self) -> None:
        self.saved: List[str] = []

    def save(self, name: str, **extra) -> None:
        self.saved.append(name)


def test_epoch_end_hook_checkpoint_period_and_best_metric():
    """Checkpoints after every ``period``-th epoch (1-based) and the final one; model_best when
    the metric improves, recorded with its epoch."""
    metrics = {1: 30.0, 3: 20.0, 4: 35.0}
    ckpt = _RecordingCheckpointer()
    hook = EpochEndHook(ckpt, period=2, metric_key="metric")
    trainer = SimpleNamespace(
        max_epoch=5,
        iter=0,
        stops_after_epoch=lambda: False,
        is_eval_epoch=lambda e: e in metrics,
        evaluate=lambda: {"R1": metrics[trainer.epoch], "metric": metrics[trainer.epoch]},
    )
    hook.trainer = trainer
    with EventStorage(0) as trainer.storage:
        for epoch in range(5):
            trainer.epoch, trainer.iter = epoch, 10 * (epoch + 1)
            hook.after_epoch()
    assert ckpt.saved == [
        "model_0001",
        "model_best",  # epoch 1: 30
        "model_0003",  # epoch 3: 20, not better
        "model_final",
        "model_best",  # epoch 4: 35
    ]
    assert hook.best["metric"] == 35.0 and hook.best["epoch"] == 4
    assert hook.best["iteration"] == 50


@pytest.mark.parametrize(
    "period, evaluated", [(3, [2, 5, 6]), (1, list(range(7))), (0, [6]), (10, [6])]
)
def test_eval_period_counts_epochs_from_one(period, evaluated):
    trainer = SimpleNamespace(cfg=SimpleNamespace(TEST=SimpleNamespace(EVAL_PERIOD=period)))
    trainer.max_epoch = 7
    assert [e for e in range(7) if ExtTrainer.is_eval_epoch(trainer, e)] == evaluated


def _draws() -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_epoch_seed_follows_seed_epoch_and_rank(monkeypatch):
    """Every RNG is re-seeded from (SEED, 2 * epoch + offset, rank): two ranks or two epochs never
    draw the same augmentations / masks, and the same triple always does."""
    draws = {}
    for rank in (0, 1):
        monkeypatch.setattr(trainer_mod.comm, "get_rank", lambda r=rank: r)
        for epoch in (0, 3):
            for offset in (0, 1):
                trainer = SimpleNamespace(cfg=SimpleNamespace(SEED=5), epoch=epoch)
                ExtTrainer._seed_epoch(trainer, offset)
                draws[rank, epoch, offset] = _draws()
                torch.manual_seed(trainer_mod._epoch_seed(5, 2 * epoch + offset, rank))
                assert float(torch.rand(())) == draws[rank, epoch, offset][2]
    assert len(set(draws.values())) == len(draws) == 8
    monkeypatch.setattr(trainer_mod.comm, "get_rank", lambda: 1)
    ExtTrainer._seed_epoch(SimpleNamespace(cfg=SimpleNamespace(SEED=5), epoch=3), 1)
    assert _draws() == draws[1, 3, 1]


def test_gradient_clipping_reaches_the_step(synthetic_root, tmp_path):
    """SOLVER.CLIP_GRADIENTS: after a step the gradients' total norm is at most CLIP_VALUE (a
    randomly initialised model's gradient norm is far above 1e-3)."""
    clip = ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.001"]
    trainer = ExtTrainer(_cfg(synthetic_root, str(tmp_path), 1, clip))
    trainer._trainer.data_loader.batch_sampler.set_epoch(0)
    trainer._trainer.reset_data_iterator()
    with EventStorage(0):
        trainer._trainer.run_step()
    grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"]]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert 0 < float(norm) <= 0.001 * (1 + 1e-4)
