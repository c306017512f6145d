"""The fast-reid compatibility layer: the version check, and fixes that are idempotent and each
repair what they claim to."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError

import pytest
import torch
from torch import nn

from fastreid_ext import compat

INSTALL = "pip install --no-deps fastreid==1.4.0"


def test_installed_fastreid_is_the_supported_release():
    assert compat.check_fastreid_version() == compat.SUPPORTED_FASTREID == "1.4.0"
    assert compat.FASTREID_INSTALL_COMMAND == INSTALL


@pytest.mark.parametrize("other", ["1.3.0", "1.4.1", "1.4"])
def test_other_fastreid_release_is_refused_with_the_install_command(other):
    with pytest.raises(compat.FastReIDVersionError) as info:
        compat.check_fastreid_version(other)
    message = str(info.value)
    assert f"fastreid {other} is installed" in message and "1.4.0 only" in message
    assert INSTALL in message


def test_missing_fastreid_names_the_no_deps_install(monkeypatch):
    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(compat, "version", not_installed)
    with pytest.raises(compat.FastReIDVersionError, match="not installed") as info:
        compat.check_fastreid_version()
    assert INSTALL in str(info.value) and isinstance(info.value, ImportError)


def test_import_fastreid_ext_refuses_another_fastreid_release():
    """The check runs on ``import fastreid_ext``, before any fix touches fast-reid."""
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '1.3.0' if name == 'fastreid' else real(name)\n"
        "import fastreid_ext\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()
    assert last[-2].startswith("fastreid_ext.compat.FastReIDVersionError: fastreid_ext supports")
    assert last[-1].strip() == INSTALL


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


def test_checkpoint_loading_is_left_to_the_engine(tmp_path):
    """fast-reid's Checkpointer is not patched; the trainer's checkpointer loads with
    ``weights_only=True``, so a pickle that would run code is refused and the file is named."""
    from fastreid.utils.checkpoint import Checkpointer

    from fastreid_ext.engine.checkpoint import ExtCheckpointer

    assert Checkpointer._load_file.__module__ == "fastreid.utils.checkpoint"

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": Evil()}, path)
    with pytest.raises(RuntimeError, match=r"evil\.pth.*weights_only=True"):
        ExtCheckpointer(nn.Linear(2, 2))._load_file(str(path))
