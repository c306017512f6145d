"""The fast-reid compatibility fixes: idempotent, and each repairs what it claims to."""

from __future__ import annotations

import sys

import torch
from torch import nn

from fastreid_ext import compat


def test_every_fix_applied_and_idempotent():
    compat.apply()
    compat.apply()
    assert set(compat.APPLIED) == {
        "torch_six",
        "collections_abc",
        "numpy_bool",
        "contiguous_optimizer",
        "dataloader_prefetch",
        "rank_cython_build",
        "jaccard_cpu_faiss",
        "random_affine",
        "test_loader_workers",
        "ddp_device_ids",
        "safe_checkpoint_load",
    }
    assert "torch._six" in sys.modules
    import fastreid.data  # noqa: F401  (fails on torch 2 without the shims)
    import fastreid.evaluation  # noqa: F401


def test_fastreid_optimizer_updates_weights():
    """fast-reid's default (contiguous) optimizer never updated a weight under torch 2."""
    from fastreid.config import get_cfg
    from fastreid.solver import build_optimizer

    cfg = get_cfg()
    cfg.SOLVER.OPT = "SGD"
    cfg.SOLVER.BASE_LR = 0.1
    model = nn.Linear(4, 2)
    optimizer, _ = build_optimizer(cfg, model)
    before = model.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
    assert not torch.equal(before, model.weight.detach())


def test_dataloaderx_runs_on_cpu():
    from fastreid.data.data_utils import DataLoaderX

    data = [{"x": torch.full((2,), float(i))} for i in range(5)]
    loader = DataLoaderX(0, dataset=data, batch_size=2, pin_memory=True)
    batches = list(loader)
    assert [b["x"].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0]["x"].device.type == "cpu"


def test_random_affine_accepts_old_keywords():
    import fastreid.data.transforms.build as tb
    import torchvision.transforms as tvt

    aff = tb.T.RandomAffine(degrees=0, translate=(0.1, 0.1), resample=False, fillcolor=0)
    assert isinstance(aff, tvt.RandomAffine) and aff.fill == 0
    assert tvt.RandomAffine is not tb.T.RandomAffine  # global torchvision untouched


def test_jaccard_reranking_runs_without_gpu_faiss():
    from fastreid.utils.compute_dist import build_dist

    feats = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    dist = build_dist(feats, feats, metric="jaccard", k1=5, k2=2)
    assert dist.shape == (30, 30)


def test_test_loader_honours_num_workers():
    import fastreid.data.build as db
    from fastreid.config import get_cfg

    cfg = get_cfg()
    cfg.DATALOADER.NUM_WORKERS = 0
    captured = {}

    def original(cfg, **kwargs):
        captured.update(kwargs)
        return {"test_set": [], "test_batch_size": 1, "num_query": 0}

    out = compat._make_test_loader_from_config(original)(cfg, dataset_name="X", num_workers=3)
    assert out["num_workers"] == 3 and captured == {"dataset_name": "X"}  # not sent to the dataset
    out = compat._make_test_loader_from_config(original)(cfg, dataset_name="X")
    assert out["num_workers"] == 0  # fast-reid hard-coded 4
    assert db._test_loader_from_config.__qualname__.startswith("_make_test_loader_from_config")


def test_ddp_factory_drops_device_ids_for_cpu_modules(monkeypatch):
    import torch.nn.parallel as par

    seen = {}

    class FakeDDP:
        def __init__(self, module, device_ids=None, **kwargs):
            seen["device_ids"] = device_ids

    monkeypatch.setattr(par, "DistributedDataParallel", FakeDDP)
    compat._DeviceAwareDDP(nn.Linear(2, 2), device_ids=[0], broadcast_buffers=False)
    assert seen["device_ids"] is None


def test_checkpoint_load_is_weights_only(tmp_path):
    import pytest
    from fastreid.utils.checkpoint import Checkpointer

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": Evil()}, path)
    with pytest.raises(RuntimeError, match="evil.pth"):
        Checkpointer(nn.Linear(2, 2))._load_file(str(path))
