"""Compatibility fixes for ``fastreid==1.4.0`` on Python 3.10+ / torch 2 / numpy 2 / CPU.

This is the one place where fast-reid is patched. :func:`apply` is called by ``import fastreid_ext``
before anything from fast-reid is imported elsewhere in the plugin. It first checks that the
installed fast-reid is the release these fixes were written for (:func:`check_fastreid_version`):
they replace functions inside fast-reid 1.4.0's modules, so on another release they could patch
the wrong code silently. Every fix is idempotent and keyed by name in :data:`APPLIED`. The fixes
make fast-reid 1.4.0 work as intended on today's Python, torch, torchvision and numpy, and nothing
more: behaviour of our own (such as safe checkpoint loading) belongs to the engine. Fixes of
CUDA-only code keep fast-reid's original code path whenever CUDA is usable, so on a GPU machine
they only repair what is broken there too.

The fixes, in the order :func:`apply` runs them (each function's docstring says what fast-reid
does, why it fails and what the fix changes):

* ``torch_six``: ``fastreid/data/build.py`` imports ``torch._six``, which torch 2.0 removed.
* ``collections_abc``: fast-reid imports ``Mapping`` etc. from ``collections`` (gone in Python
  3.10).
* ``numpy_bool``: ``np.bool`` is missing on numpy 1.24-1.26 (numpy 2 has it again).
* ``contiguous_optimizer``: fast-reid's default optimizer never updates a weight under torch 2.
* ``dataloader_prefetch``: the training loader's prefetcher needs CUDA.
* ``rank_cython_build``: the evaluator compiles a Cython module at run time and exits the process
  when that fails.
* ``jaccard_cpu_faiss``: k-reciprocal re-ranking always asks faiss for a GPU index.
* ``random_affine``: fast-reid passes keywords that torchvision 0.15 removed from ``RandomAffine``.
* ``test_loader_workers``: the test loader ignores ``DATALOADER.NUM_WORKERS``.
* ``ddp_device_ids``: fast-reid's DDP wrapper passes a CUDA device to CPU modules.

Checkpoint loading is not patched here: the trainer's checkpointer
(:class:`fastreid_ext.engine.checkpoint.ExtCheckpointer`) loads with ``weights_only=True``.
"""

from __future__ import annotations

import collections
import collections.abc
import logging
import math
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Dict, Optional

logger = logging.getLogger(__name__)

__all__ = [
    "APPLIED",
    "FASTREID_INSTALL_COMMAND",
    "FastReIDVersionError",
    "SUPPORTED_FASTREID",
    "apply",
    "apply_import_shims",
    "check_fastreid_version",
    "cuda_usable",
    "faiss_gpu_usable",
]

# The fast-reid release whose internals the fixes below patch.
SUPPORTED_FASTREID = "1.4.0"
# fast-reid's wheel metadata pins torch 1.13 and torchvision 0.14, so it is installed without its
# dependencies; ours (pyproject.toml) include the ones it really imports.
FASTREID_INSTALL_COMMAND = f"pip install --no-deps fastreid=={SUPPORTED_FASTREID}"

APPLIED: Dict[str, bool] = {}


class FastReIDVersionError(ImportError):
    """fast-reid is missing, or installed in a release these fixes were not written for."""


def check_fastreid_version(installed: Optional[str] = None) -> str:
    """The installed fast-reid version, or :class:`FastReIDVersionError` unless it is
    :data:`SUPPORTED_FASTREID`.

    ``installed`` defaults to the version in the installed distribution's metadata
    (``fastreid.__version__`` says "1.3" in the 1.4.0 release, so it cannot be used).
    """
    if installed is None:
        try:
            installed = version("fastreid")
        except PackageNotFoundError:
            raise FastReIDVersionError(
                f"fastreid_ext needs fast-reid {SUPPORTED_FASTREID} (the 'fastreid' package), "
                "which is not installed. Install it without its dependencies -- its metadata "
                "pins torch 1.13, which pip would otherwise install over torch 2:\n"
                f"    {FASTREID_INSTALL_COMMAND}"
            ) from None
    if installed != SUPPORTED_FASTREID:
        raise FastReIDVersionError(
            f"fastreid_ext supports fast-reid {SUPPORTED_FASTREID} only, but fastreid {installed} "
            "is installed: the compatibility fixes in fastreid_ext/compat.py patch functions "
            f"inside the {SUPPORTED_FASTREID} release and could silently patch the wrong code in "
            f"another one. Install the supported release:\n    {FASTREID_INSTALL_COMMAND}"
        )
    return installed


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
    """True when torch sees a CUDA device (the condition for fast-reid's CUDA-only code paths)."""
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Import-time shims (must run before the first ``import fastreid.data``)
# ---------------------------------------------------------------------------------------------
@_once("torch_six")
def _fix_torch_six() -> None:
    """Provide ``torch._six`` with the names fast-reid imports from it.

    ``fastreid/data/build.py`` does ``from torch._six import string_classes``; torch 2.0 removed
    the module, so ``import fastreid.data`` fails. A stand-in module with the same values
    (``string_classes``, ``int_classes``, ``container_abcs``, ``inf``) is registered in
    ``sys.modules``; on a torch that still has ``torch._six`` nothing is done.
    """
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
    """Alias the abstract base classes that ``collections`` lost in Python 3.10.

    fast-reid's data and config code imports ``collections.Mapping`` (and friends); they moved to
    ``collections.abc`` in Python 3.3 and the old names were removed in 3.10. The same classes are
    made reachable under the old names; names that exist are left alone.
    """
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


@_once("numpy_bool")
def _fix_numpy_bool() -> None:
    """Restore ``np.bool`` where it is missing.

    fast-reid's evaluation code uses ``np.bool``, which numpy 1.24 removed and numpy 2 brought
    back. On numpy 1.24-1.26 it is aliased to ``np.bool_``; on numpy 2 this does nothing.
    """
    import numpy as np

    if not hasattr(np, "bool"):
        np.bool = np.bool_  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Run-time fixes (applied after fast-reid is importable)
# ---------------------------------------------------------------------------------------------
@_once("contiguous_optimizer")
def _fix_contiguous_optimizer() -> None:
    """Make ``build_optimizer`` default to per-parameter groups (``contiguous=False``).

    fast-reid's ``build_optimizer(cfg, model, contiguous=True)`` packs every parameter into one
    flat ``ContiguousParams`` buffer. Since torch 2.0, ``zero_grad()`` sets gradients to ``None``,
    which detaches the buffer from the parameters' gradients: the optimizer steps on a gradient
    that is always zero, and no weight is ever updated, without any error. The wrapper keeps
    the signature and passes ``contiguous=False`` unless a caller asks otherwise; it replaces the
    function in every module that imported it by name (``fastreid.solver``,
    ``fastreid.solver.build``, ``fastreid.engine.defaults``).
    """
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
    """Let ``DataLoaderX`` run without CUDA; its CUDA-stream path is kept when CUDA is usable.

    fast-reid's training loader ``DataLoaderX`` creates a ``torch.cuda.Stream`` in its
    constructor and copies every batch to ``cuda:<local_rank>`` in ``preload``, and its
    ``BackgroundGenerator`` thread selects a CUDA device; all three fail on a machine without
    CUDA. Without CUDA the loader now behaves like a plain ``DataLoader`` whose next batch is
    fetched ahead (no stream, no pinned memory, batches stay on the CPU); with CUDA the original
    methods run unchanged.
    """
    import fastreid.data.data_utils as du
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


@_once("rank_cython_build")
def _fix_rank_cython_build() -> None:
    """Never compile (nor exit) at evaluation time; fast-reid's exact Python ranking is used.

    ``ReidEvaluator._compile_dependencies`` runs ``make`` in fast-reid's installed source tree to
    build its Cython ranking extension and calls ``sys.exit(1)`` when that fails (no compiler or
    ``make``, or a read-only install), ending the whole run at its first evaluation. fast-reid's
    ranking already falls back to its pure-Python implementation of the same metrics when the
    extension is missing; the method now only synchronises the processes, as the original does
    after compiling. (Our own evaluators do not use fast-reid's ranking code.)
    """
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
    """Route k-reciprocal re-ranking to the CPU faiss index unless GPU faiss is usable.

    ``fastreid.utils.compute_dist.compute_jaccard_distance`` defaults to ``search_option=0``, a
    faiss GPU index, which fails with faiss-cpu or without a GPU. When GPU faiss cannot be used,
    the GPU options (0 and 1) become option 3: the same exact L2 nearest-neighbour search, on a
    CPU ``IndexFlatL2``. With a GPU and a GPU-enabled faiss the requested option is kept.
    """
    import fastreid.utils.compute_dist as cd

    original = cd.compute_jaccard_distance

    def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
        if search_option in (0, 1) and not faiss_gpu_usable():
            search_option = 3
        return original(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)

    cd.compute_jaccard_distance = compute_jaccard_distance


@_once("random_affine")
def _fix_random_affine() -> None:
    """Give fast-reid's transform builder a ``RandomAffine`` that accepts the old keywords.

    ``fastreid/data/transforms/build.py`` builds ``T.RandomAffine(..., resample=False,
    fillcolor=...)``; torchvision 0.15 removed both keywords (``fill`` replaces ``fillcolor``).
    The builder's module alias ``T`` is pointed at a copy of ``torchvision.transforms`` whose
    ``RandomAffine`` maps ``fillcolor`` to ``fill`` and drops ``resample`` (fast-reid passes
    ``False``, the default nearest interpolation). torchvision itself is not modified.
    """
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
    """Honour ``DATALOADER.NUM_WORKERS`` in ``build_reid_test_loader``.

    fast-reid's test loader always starts 4 worker processes, whatever the config says (and
    passes an explicit ``num_workers`` on to the dataset). The config function now takes the
    count from ``cfg.DATALOADER.NUM_WORKERS`` unless the caller passes one. Because
    ``@configurable`` captured the original config function, the decorated loader builder is
    rebuilt and replaced wherever fast-reid imported it by name.
    """
    import fastreid.data as fdata
    import fastreid.data.build as db
    import fastreid.engine.defaults as defaults
    from fastreid.config import configurable

    fixed = _make_test_loader_from_config(db._test_loader_from_config)
    db._test_loader_from_config = fixed
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
    """Wrap CPU modules in DDP without ``device_ids``.

    ``DefaultTrainer`` wraps the model as ``DistributedDataParallel(model,
    device_ids=[local_rank])``, which torch rejects for a module on the CPU (multi-process gloo
    training with ``MODEL.DEVICE cpu``). The name ``DistributedDataParallel`` in
    ``fastreid.engine.defaults`` now builds DDP with ``device_ids=None`` for modules that are not
    on CUDA and exactly as before for CUDA modules.
    """
    import fastreid.engine.defaults as defaults

    defaults.DistributedDataParallel = _DeviceAwareDDP


def apply_import_shims() -> None:
    """Shims needed before ``fastreid`` can be imported at all."""
    _fix_torch_six()
    _fix_collections_abc()
    _fix_numpy_bool()


def apply() -> None:
    """Check the fast-reid version, then apply every fix (idempotent)."""
    check_fastreid_version()
    apply_import_shims()
    _fix_contiguous_optimizer()
    _fix_dataloader_prefetch()
    _fix_rank_cython_build()
    _fix_jaccard_cpu_faiss()
    _fix_random_affine()
    _fix_test_loader_workers()
    _fix_ddp_device_ids()
