"""Compatibility fixes for ``fastreid==1.4.0`` on Python 3.11 / torch 2.x / numpy 2 / CPU.

This is the one place where fast-reid is patched. :func:`apply` is called by ``import fastreid_ext``
before anything from fast-reid is imported elsewhere in the plugin. Every fix is idempotent and keyed
by name in :data:`APPLIED`; fixes that concern CUDA-only code paths keep fast-reid's original
behaviour whenever CUDA is actually usable, so on a GPU machine they only repair what is broken.

Fixes (numbers refer to ``shared/reference/fastreid-platform.md``):

* ``torch_six`` (I1): ``fastreid/data/build.py`` imports ``torch._six``, removed in torch 2.0.
* ``collections_abc`` (I2): ``from collections import Mapping`` was removed in Python 3.10.
* ``numpy_bool`` (I3): ``np.bool`` on numpy 1.24-1.26 (a no-op on numpy 2).
* ``contiguous_optimizer`` (R1): with torch >= 2, ``zero_grad(set_to_none=True)`` detaches the
  ``ContiguousParams`` flat buffer from its gradient, so fast-reid's default optimizer silently never
  updates a weight. ``build_optimizer`` now defaults to ``contiguous=False``.
* ``dataloader_prefetch`` (C1): ``DataLoaderX`` creates CUDA streams and moves batches to
  ``local_rank``; without CUDA it now behaves like a plain ``DataLoader`` with a background thread.
* ``rank_cython_build`` (C2): the evaluator compiles its Cython ranking module with ``make`` and calls
  ``sys.exit(1)`` when that fails; it now only synchronises (fast-reid falls back to its exact
  pure-Python ranking).
* ``jaccard_cpu_faiss`` (C3/C7): re-ranking forced the GPU faiss path (``search_option=0``); it now
  uses the CPU index unless torch CUDA and a GPU-enabled faiss are both available.
* ``random_affine`` (R2): torchvision >= 0.15 dropped ``resample``/``fillcolor`` of ``RandomAffine``.
* ``test_loader_workers`` (R3): the test loader ignored ``DATALOADER.NUM_WORKERS`` (always 4).
* ``ddp_device_ids`` (C5): ``DefaultTrainer`` passes ``device_ids=[local_rank]`` to DDP, which raises
  for CPU modules; the wrapper passes ``device_ids=None`` for modules not on CUDA.
* ``safe_checkpoint_load``: checkpoints are loaded with ``weights_only=True`` and a load failure
  names the file.
"""

from __future__ import annotations

import collections
import collections.abc
import logging
import math
import sys
import types
from typing import Callable, Dict

logger = logging.getLogger(__name__)

APPLIED: Dict[str, bool] = {}


def _once(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        def wrapper() -> None:
            if APPLIED.get(name):
                return
            fn()
            APPLIED[name] = True

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    return deco


def cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Import-time shims (must run before the first ``import fastreid.data``)
# ---------------------------------------------------------------------------------------------
@_once("torch_six")
def _fix_torch_six() -> None:
    """I1: provide ``torch._six`` with the names fast-reid imports from it."""
    if "torch._six" in sys.modules:
        return
    try:
        import torch._six  # noqa: F401  (present on torch < 2.0)

        return
    except ImportError:
        pass
    six = types.ModuleType("torch._six")
    six.string_classes = (str, bytes)
    six.int_classes = int
    six.container_abcs = collections.abc
    six.inf = math.inf
    sys.modules["torch._six"] = six


@_once("collections_abc")
def _fix_collections_abc() -> None:
    """I2: alias the ABCs that ``collections`` lost in Python 3.10."""
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


@_once("numpy_bool")
def _fix_numpy_bool() -> None:
    """I3: ``np.bool`` is missing on numpy 1.24-1.26 only."""
    import numpy as np

    if not hasattr(np, "bool"):
        np.bool = np.bool_  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Run-time fixes (applied after fast-reid is importable)
# ---------------------------------------------------------------------------------------------
@_once("contiguous_optimizer")
def _fix_contiguous_optimizer() -> None:
    """R1: make ``build_optimizer`` default to per-parameter groups (``contiguous=False``)."""
    import fastreid.solver as solver
    import fastreid.solver.build as sb

    original = sb.build_optimizer

    def build_optimizer(cfg, model, contiguous: bool = False):
        return original(cfg, model, contiguous=contiguous)

    build_optimizer.__doc__ = original.__doc__
    sb.build_optimizer = build_optimizer
    solver.build_optimizer = build_optimizer
    import fastreid.engine.defaults as defaults

    defaults.build_optimizer = build_optimizer


@_once("dataloader_prefetch")
def _fix_dataloader_prefetch() -> None:
    """C1: CPU-safe ``DataLoaderX``; the CUDA stream path is kept when CUDA is usable."""
    import fastreid.data.data_utils as du
    import torch
    from torch.utils.data import DataLoader

    cls = du.DataLoaderX
    orig_init, orig_preload, orig_next = cls.__init__, cls.preload, cls.__next__
    gen_cls = du.BackgroundGenerator
    orig_run = gen_cls.run

    def __init__(self, local_rank, **kwargs):
        if cuda_usable():
            return orig_init(self, local_rank, **kwargs)
        kwargs["pin_memory"] = False
        DataLoader.__init__(self, **kwargs)
        self.stream = None
        self.local_rank = local_rank

    def preload(self):
        if self.stream is not None:
            return orig_preload(self)
        self.batch = next(self.iter, None)
        return None

    def __next__(self):
        if self.stream is not None:
            return orig_next(self)
        batch = self.batch
        if batch is None:
            raise StopIteration
        self.preload()
        return batch

    def run(self):
        if cuda_usable():
            return orig_run(self)
        for item in self.generator:
            if self.exit_event.is_set():
                break
            self.queue.put(item)
        self.queue.put(None)

    cls.__init__, cls.preload, cls.__next__ = __init__, preload, __next__
    gen_cls.run = run
    del torch


@_once("rank_cython_build")
def _fix_rank_cython_build() -> None:
    """C2: never compile (and ``sys.exit``) at evaluation time; the exact Python ranking is used."""
    from fastreid.evaluation.reid_evaluation import ReidEvaluator
    from fastreid.utils import comm

    def _compile_dependencies(self):
        comm.synchronize()

    ReidEvaluator._compile_dependencies = _compile_dependencies


def faiss_gpu_usable() -> bool:
    """True when both torch CUDA and a GPU-enabled faiss with at least one visible GPU exist."""
    if not cuda_usable():
        return False
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


@_once("jaccard_cpu_faiss")
def _fix_jaccard_cpu_faiss() -> None:
    """C3: route k-reciprocal re-ranking to the CPU faiss index unless GPU faiss is usable."""
    import fastreid.utils.compute_dist as cd

    original = cd.compute_jaccard_distance

    def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
        if search_option in (0, 1) and not faiss_gpu_usable():
            search_option = 3
        return original(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)

    cd.compute_jaccard_distance = compute_jaccard_distance


@_once("random_affine")
def _fix_random_affine() -> None:
    """R2: give fast-reid's transform builder a ``RandomAffine`` that accepts the old keywords."""
    import fastreid.data.transforms.build as tb
    import torchvision.transforms as tvt

    class RandomAffine(tvt.RandomAffine):
        def __init__(self, *args, resample=None, fillcolor=None, **kwargs):
            if fillcolor is not None and "fill" not in kwargs:
                kwargs["fill"] = fillcolor
            super().__init__(*args, **kwargs)

    namespace = types.ModuleType("fastreid_ext._torchvision_transforms")
    namespace.__dict__.update({k: v for k, v in vars(tvt).items() if not k.startswith("__")})
    namespace.RandomAffine = RandomAffine
    tb.T = namespace


def _make_test_loader_from_config(original: Callable) -> Callable:
    """Wrap fast-reid's ``_test_loader_from_config`` so ``num_workers`` comes from the config."""

    def _test_loader_from_config(cfg, **kwargs):
        num_workers = kwargs.pop("num_workers", cfg.DATALOADER.NUM_WORKERS)
        out = original(cfg, **kwargs)
        out["num_workers"] = num_workers
        return out

    return _test_loader_from_config


@_once("test_loader_workers")
def _fix_test_loader_workers() -> None:
    """R3: honour ``cfg.DATALOADER.NUM_WORKERS`` in ``build_reid_test_loader``."""
    import fastreid.data as fdata
    import fastreid.data.build as db
    import fastreid.engine.defaults as defaults
    from fastreid.config import configurable

    fixed = _make_test_loader_from_config(db._test_loader_from_config)
    db._test_loader_from_config = fixed
    # ``configurable`` captured the original ``from_config``: rebuild the decorated function.
    inner = db.build_reid_test_loader.__wrapped__
    rebuilt = configurable(from_config=fixed)(inner)
    db.build_reid_test_loader = rebuilt
    fdata.build_reid_test_loader = rebuilt
    defaults.build_reid_test_loader = rebuilt


class _DeviceAwareDDP:
    """Factory standing in for ``DistributedDataParallel`` inside ``fastreid.engine.defaults``."""

    def __new__(cls, module, device_ids=None, **kwargs):
        from torch.nn.parallel import DistributedDataParallel

        param = next(module.parameters(), None)
        if param is None or param.device.type != "cuda":
            device_ids = None
            kwargs.pop("output_device", None)
        return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


@_once("ddp_device_ids")
def _fix_ddp_device_ids() -> None:
    """C5: DDP without ``device_ids`` for CPU modules."""
    import fastreid.engine.defaults as defaults

    defaults.DistributedDataParallel = _DeviceAwareDDP


@_once("safe_checkpoint_load")
def _fix_safe_checkpoint_load() -> None:
    """Load checkpoints with ``weights_only=True`` and name the file on failure."""
    import torch
    from fastreid.utils.checkpoint import Checkpointer

    def _load_file(self, f: str):
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(
                f"Cannot load checkpoint '{f}' with weights_only=True: {exc}. fastreid_ext "
                "checkpoints hold only tensors and plain Python values; is this file a checkpoint "
                "written by fast-reid / fastreid_ext?"
            ) from exc

    Checkpointer._load_file = _load_file


def apply_import_shims() -> None:
    """Shims needed before ``fastreid`` can be imported at all."""
    _fix_torch_six()
    _fix_collections_abc()
    _fix_numpy_bool()


def apply() -> None:
    """Apply every fix (idempotent)."""
    apply_import_shims()
    _fix_contiguous_optimizer()
    _fix_dataloader_prefetch()
    _fix_rank_cython_build()
    _fix_jaccard_cpu_faiss()
    _fix_random_affine()
    _fix_test_loader_workers()
    _fix_ddp_device_ids()
    _fix_safe_checkpoint_load()
