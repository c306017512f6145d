"""CSDN under DDP (two gloo ranks on CPU): gathered batch-pool losses reproduce one process on
the whole global batch (losses and gradients), the trainer's DDP wrapper follows
TRAINER.BROADCAST_BUFFERS while rank 0's buffers reach every rank, SyncBatchNorm conversion
(CUDA-only: conversion and the CPU error only), and the atomically written image bank."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from fastreid.modeling.meta_arch import build_model
from torch import nn

from csdn.distributed import (
    SYNC_BN_MODULES,
    apply_sync_batchnorm,
    convert_sync_batchnorm,
    count_batchnorm,
)
from csdn.modeling.encoder import VisualOutputs
from csdn.modeling.meta_arch import PHASES
from csdn.trainer import CSDNPhasedTrainer
from fastreid_ext.config import ConfigValueError
from fastreid_ext.data.vi import write_synthetic_sysu
from fastreid_ext.engine.distributed import create_ddp_model, unwrap_model
from fastreid_ext.engine.setup import build_cfg
from fastreid_ext.utils.atomic_io import is_temporary

from .conftest import REPO
from .test_csdn_modules import _cfg

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "CSDN" / "demo.yml")
WORLD = 2
# the global batch: 4 identities x K = 2 pairs; rank r takes pairs [4r, 4r + 4) (whole
# identities, as the cross-modal sampler shards a batch)
LABELS = torch.tensor([0, 0, 1, 1, 3, 3, 5, 5])
POOL_LOSSES = {"loss_mspl_i2t", "loss_mspl_t2i", "loss_sii_i2t", "loss_sii_t2i"}
POOL_LOSSES |= {"loss_triplet", "loss_msel"}


def _init(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def _teardown() -> None:
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


# ------------------------------------------------------------------ gathered losses
class _TrainableStub(nn.Module):
    """A BatchNorm-free image encoder with trainable weights and image-dependent features
    (SyncBatchNorm, CUDA-only, is what makes BN statistics global; here BN is kept out)."""

    def __init__(self, global_dim: int, proj_dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w_g = nn.Parameter(torch.randn(96, global_dim, generator=g))
        self.w_p = nn.Parameter(torch.randn(96, proj_dim, generator=g))

    def forward(self, visible=None, infrared=None) -> VisualOutputs:
        x = torch.cat([t for t in (visible, infrared) if t is not None])
        z = F.normalize(F.adaptive_avg_pool2d(x, (8, 4)).flatten(1), dim=1)  # [B, 96]
        return VisualOutputs((z @ self.w_g).abs()[:, :, None, None] + 0.1, z @ self.w_p)


def _model(gather: bool) -> nn.Module:
    """The tiny CSDN with the stub encoder, heads' BN in eval mode, random text banks."""
    torch.manual_seed(0)
    cfg = _cfg("MODEL.CSDN.SII.DROPOUT", "0.0", "MODEL.CSDN.DDP.GATHER_LOSS_FEATURES", str(gather))
    model = build_model(cfg).train()
    enc = model.image_encoder
    model.image_encoder = _TrainableStub(enc.global_dim, enc.proj_dim)
    g = torch.Generator().manual_seed(6)
    n, d = model.num_classes, model.text_bank_visible.shape[1]
    with torch.no_grad():
        for head, dim in ((model.head_gem, enc.global_dim), (model.head_proj, enc.proj_dim)):
            head.classifier.weight.copy_(torch.randn(n, dim, generator=g) * dim**-0.5)
        model.text_bank_visible.copy_(torch.randn(n, d, generator=g) / d)
        model.text_bank_infrared.copy_(torch.randn(n, d, generator=g) / d)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    model.cfg = cfg
    return model


def _global_batch(model: nn.Module, phase: str) -> Dict[str, torch.Tensor]:
    """The phase's global batch (8 items / pairs), identical in every process."""
    g = torch.Generator().manual_seed(7)
    d = model.text_bank_visible.shape[1]
    if phase == "prompt":
        v, r = torch.randn(8, d, generator=g), torch.randn(8, d, generator=g)
        return {"vis_feats": v, "ir_feats": r, "targets": LABELS}
    if phase == "fusion":
        with torch.no_grad():
            t_vis, t_ir = model.class_texts(torch.arange(model.num_classes))
        return {
            "feats": torch.randn(8, d, generator=g) * 3,
            "targets": LABELS,
            "class_text_vis": t_vis,
            "class_text_ir": t_ir,
        }
    return {
        "vis_images": torch.rand(8, 2, 3, 64, 32, generator=g) * 255,
        "ir_images": torch.rand(8, 3, 64, 32, generator=g) * 255,
        "vis_targets": LABELS,
        "ir_targets": LABELS,
    }


def _shard(batch: Dict[str, torch.Tensor], rank: Optional[int]) -> Dict[str, torch.Tensor]:
    """Rank ``rank``'s share (rows [4r, 4r + 4)); the whole batch for ``None``. Class texts
    ``[N, D]`` travel whole."""
    if rank is None:
        return batch
    rows = slice(4 * rank, 4 * rank + 4)
    return {k: v if k.startswith("class_text") else v[rows] for k, v in batch.items()}


def _step(gather: bool, phase: str, rank: Optional[int]) -> Tuple[dict, dict]:
    """One forward/backward of ``phase`` (DDP-wrapped in a multi-process world): the loss
    values and the gradients of the phase's parameters (DDP-averaged over ranks)."""
    model = _model(gather)
    model.set_trainable(phase)
    batch = _shard(_global_batch(model, phase), rank)
    wrapped = create_ddp_model(model, model.cfg)
    losses = wrapped(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return {k: float(v.detach()) for k, v in losses.items()}, grads


def _gather_rank(rank: int, init_file: str, out_dir: str) -> None:
    _init(rank, init_file)
    torch.set_num_threads(1)
    out = {
        (gather, phase): _step(gather, phase, rank) for gather in (True, False) for phase in PHASES
    }
    torch.save(out, os.path.join(out_dir, f"gather_rank{rank}.pt"))
    _teardown()


def test_gathered_losses_and_gradients_equal_one_process_on_the_global_batch(tmp_path):
    """With GATHER_LOSS_FEATURES every rank's batch-pool losses (SupCon of phases 1-2, WRT and
    MSEL of phase 3) equal one process's on the whole batch, and DDP's averaged gradients equal
    the single-process gradients; without it (the old behaviour) neither holds."""
    mp.spawn(_gather_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"gather_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for phase in PHASES:
        want_losses, want_grads = _step(True, phase, None)  # one process, whole batch
        for gather in (True, False):
            (l0, g0), (l1, g1) = ranks[0][gather, phase], ranks[1][gather, phase]
            assert set(l0) == set(want_losses) and set(g0) == set(want_grads)
            for name in g0:  # DDP averaged: the same gradients on both ranks
                torch.testing.assert_close(g0[name], g1[name], rtol=0, atol=0)
            mean = {k: (l0[k] + l1[k]) / 2 for k in l0}
            if gather:
                for k, v in want_losses.items():
                    assert mean[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (phase, k)
                    if k in POOL_LOSSES:  # every rank computes the global value
                        assert l0[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (phase, k)
                        assert l1[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (phase, k)
                for name, want in want_grads.items():
                    torch.testing.assert_close(
                        g0[name], want, rtol=1e-5, atol=1e-6, msg=f"{phase} {name}"
                    )
            else:
                pooled = [k for k in want_losses if k in POOL_LOSSES and k != "loss_msel"]
                assert pooled
                for k in pooled:  # each rank's pool lacks the other rank's identities
                    assert abs(mean[k] - want_losses[k]) > 1e-3, (phase, k)
                diff = max(float((g0[n] - want_grads[n]).abs().max()) for n in want_grads)
                assert diff > 1e-4, phase
                if phase == "image":
                    # MSEL compares an image with its own identity only, and identities are
                    # whole on a rank: it is global either way
                    assert mean["loss_msel"] == pytest.approx(want_losses["loss_msel"], rel=1e-5)


# ------------------------------------------------------------------ the trainer's DDP wrapper
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("csdn_ddp"))
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


def _trainer_opts(root: str, out: str, *extra: str):
    """A tiny CSDN run on ``root`` (8 pairs per batch, P = 4); creates ``out``."""
    os.makedirs(out, exist_ok=True)
    opts = (
        "INPUT.SIZE_TRAIN [32,16] INPUT.SIZE_TEST [32,16] SOLVER.IMS_PER_BATCH 8 "
        "DATALOADER.NUM_INSTANCE 2 DATALOADER.NUM_WORKERS 0 MODEL.CSDN.PHASE1.EPOCHS 1 "
        "MODEL.CSDN.PHASE2.EPOCHS 1 MODEL.CSDN.PHASE1.IMS_PER_BATCH 8 "
        "MODEL.CSDN.PHASE2.IMS_PER_BATCH 16 SOLVER.MAX_EPOCH 1 SOLVER.STEPS [1] "
        "TEST.EVAL_PERIOD 1 TEST.VI.TRIALS 1 TEST.VI.SYSU_SETTINGS ['all-single']"
    )
    return ["DATASETS.ROOT", root, "OUTPUT_DIR", out, *opts.split(), *extra]


def _buffers(trainer) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in unwrap_model(trainer.model).named_buffers()}


def _trainer_rank(rank: int, init_file: str, root: str, out_dir: str) -> None:
    _init(rank, init_file)
    torch.set_num_threads(1)
    record = {}
    for flag in (False, True):
        torch.manual_seed(100 + rank)  # per-rank random init, as train_net's seeding
        cfg = build_cfg(
            DEMO,
            _trainer_opts(
                root, os.path.join(out_dir, str(flag)), "TRAINER.BROADCAST_BUFFERS", str(flag)
            ),
        )
        trainer = CSDNPhasedTrainer(cfg)
        model = trainer.model
        rec = {"ddp": type(model).__name__, "broadcast": model.broadcast_buffers}
        rec["init_buffers"] = _buffers(trainer)
        # phase 3 starts: new wrapper, text bank drawn with this rank's dropout RNG
        trainer.epoch = trainer.plan.starts[2]
        trainer.phase_hook.before_epoch()
        assert trainer.phase_hook.phase == trainer.phase_hook.data_phase == 2
        rec["phase3_broadcast"] = trainer.model.broadcast_buffers
        rec["phase3_buffers"] = _buffers(trainer)
        # ranks' BN statistics drift apart (no SyncBN on CPU); evaluation uses rank 0's
        bn = unwrap_model(trainer.model).head_gem.bn
        with torch.no_grad():
            bn.running_mean.add_(float(rank + 1))
        rec["eval"] = trainer.evaluate()
        rec["eval_buffers"] = _buffers(trainer)
        record[flag] = rec
    torch.save(record, os.path.join(out_dir, f"trainer_rank{rank}.pt"))
    _teardown()


def test_trainer_ddp_follows_broadcast_buffers_and_shares_rank0_buffers(tiny_root, tmp_path):
    """CSDNPhasedTrainer wraps DDP with TRAINER.BROADCAST_BUFFERS (initially and at a phase
    change; the old trainer forced True) and, without the per-forward broadcast, still gives
    every rank rank 0's buffers: the random-init prompt templates, the phase-3 text bank (drawn
    with per-rank dropout), and the BN statistics used by the rank-sharded evaluation."""
    mp.spawn(
        _trainer_rank,
        args=(str(tmp_path / "init"), tiny_root, str(tmp_path)),
        nprocs=WORLD,
        join=True,
    )
    r0, r1 = (torch.load(tmp_path / f"trainer_rank{r}.pt", weights_only=True) for r in range(WORLD))
    for flag in (False, True):
        for rec in (r0[flag], r1[flag]):
            assert rec["ddp"] == "DistributedDataParallel"
            assert rec["broadcast"] is flag and rec["phase3_broadcast"] is flag
        for key in ("init_buffers", "phase3_buffers", "eval_buffers"):
            a, b = r0[flag][key], r1[flag][key]
            assert a.keys() == b.keys()
            for name in a:
                assert torch.equal(a[name], b[name]), (flag, key, name)
        text_bank = r0[flag]["phase3_buffers"]["text_bank_visible"]
        assert float(text_bank.abs().sum()) > 0
        # rank 0's perturbed statistics are the evaluated ones
        mean = r0[flag]["eval_buffers"]["head_gem.bn.running_mean"]
        assert torch.equal(mean, r0[flag]["phase3_buffers"]["head_gem.bn.running_mean"] + 1)
        # the evaluation ran and reported on the main process only
        res = r0[flag]["eval"]
        assert all(0.0 <= res[k] <= 100.0 for k in ("R1", "mAP", "mINP")), res
        assert res["R1"] > 0.0 and not r1[flag]["eval"], r1[flag]["eval"]


# ------------------------------------------------------------------ SyncBatchNorm
def test_sync_batchnorm_conversion_and_cpu_error():
    """SYNC_BN converts every BN of the image encoder and both heads in place (same tensors,
    same state dict, same eval features) and nothing on the text side; a CPU run with several
    processes fails naming the key; one process is never converted."""
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.MODEL.CSDN.DDP.SYNC_BN = True
    model = build_model(cfg).eval()
    bn_counts = {name: count_batchnorm(getattr(model, name)) for name in SYNC_BN_MODULES}
    assert bn_counts["head_gem"] == bn_counts["head_proj"] == 1
    # two stems of three BNs, four tiny-rn bottlenecks of three BNs and a downsampling BN
    assert bn_counts["image_encoder"] == 2 * 3 + 4 * (3 + 1)
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"images": torch.rand(4, 3, 64, 32) * 255, "modality": torch.tensor([0, 1, 0, 1])}
    feats = model(batch)["image_feats"]

    assert apply_sync_batchnorm(model, cfg, world_size=1) == 0  # one process: untouched
    cfg.MODEL.CSDN.DDP.SYNC_BN = False
    assert apply_sync_batchnorm(model, cfg, world_size=2) == 0
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    cfg.MODEL.CSDN.DDP.SYNC_BN = True
    with pytest.raises(ConfigValueError, match=r"MODEL\.CSDN\.DDP\.SYNC_BN = True .* False when"):
        apply_sync_batchnorm(model, cfg, world_size=2)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())

    assert convert_sync_batchnorm(model) == sum(bn_counts.values())
    for name in SYNC_BN_MODULES:
        for m in getattr(model, name).modules():
            is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
            assert not is_bn or isinstance(m, nn.SyncBatchNorm), (name, m)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.text_encoder.modules())
    for name, p in model.named_parameters():
        assert p is params[name], name  # an optimizer built before still holds them
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k in state:
        assert torch.equal(after[k], state[k]), k
    torch.testing.assert_close(model(batch)["image_feats"], feats, rtol=0, atol=0)


# ------------------------------------------------------------------ atomic image bank
def test_image_bank_cache_is_written_atomically(tiny_root, tmp_path, monkeypatch):
    """A write of the cached image bank that dies midway leaves the previous file intact and no
    partial file (the old ``torch.save(bank, path)`` left a truncated bank behind)."""
    cfg = build_cfg(DEMO, _trainer_opts(tiny_root, str(tmp_path / "out")))
    trainer = CSDNPhasedTrainer(cfg)
    banks, module = trainer.phase_hook.banks, unwrap_model(trainer.model)
    path = banks.path(0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"previous bank")

    def dying_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(b"trunc")
        else:
            f.write(b"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        banks.get(module, 0, resumed=False)
    with open(path, "rb") as f:
        assert f.read() == b"previous bank"
    assert not [n for n in os.listdir(os.path.dirname(path)) if is_temporary(n)]
    monkeypatch.undo()
    v, r, y = banks.get(module, 0, resumed=False)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(saved["visible"], v) and torch.equal(saved["labels"], y)
