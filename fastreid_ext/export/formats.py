"""Writing and running the two export formats: ONNX (dynamic batch axis) and TorchScript.

ONNX exporters (``torch.onnx.export``), chosen with ``exporter``:

* ``"torchscript"`` (default): the TorchScript-based exporter with ``dynamic_axes``. It exports
  every method of this project, ViT and ModifiedResNet towers alike (attention pooling, the
  causal mask, the argmax EOT gather), in seconds. torch 2.9+ marks it deprecated in favour of
  the dynamo exporter; the deprecation warning is silenced here.
* ``"dynamo"``: the ``torch.export``-based exporter with ``dynamic_shapes`` (needs the
  ``onnxscript`` package). It exports the text-image methods (Baseline, Propot, CPCL), about five
  times slower; it cannot export CSDN, whose inference selects the rows of each modality with
  ``nonzero`` (a data-dependent shape ``torch.export`` cannot guard on).

PyTorch's fused multi-head-attention fast path (``aten::_native_multi_head_attention``, taken by
``nn.MultiheadAttention`` in eval mode without autograd) has no ONNX symbol: it is switched off
while an ONNX graph is traced (the unfused path computes the same attention). TorchScript
traces keep it, so a TorchScript encoder runs the very kernels of the eager model.

TorchScript files are ``torch.jit.trace`` of the wrapper, frozen (``torch.jit.freeze`` without
numerics-changing passes) so that they hold only the weights the encoder uses. A trace records
the ops for the example batch; every shape check in the model is a Python condition on the
fixed image size / context length, and the batch size stays symbolic (the verification runs
batch sizes other than the traced one to prove it).

torch 2.14 also marks ``torch.jit`` (trace, freeze, save, load) deprecated; the warnings are
silenced here and the files load with ``torch.jit.load`` in any process, without this package.

Files are written atomically (:mod:`fastreid_ext.utils.atomic_io`). An ONNX file is built in
memory, so it is limited to protobuf's 2 GiB (ViT-B/16's image tower is about 0.35 GB).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from typing import Iterator

import torch
from torch import nn

from ..utils.atomic_io import atomic_torch_save, atomic_write_bytes
from .wrappers import EncoderSpec

__all__ = [
    "FORMATS",
    "EXPORTERS",
    "FILE_SUFFIX",
    "ExportError",
    "require_onnx",
    "mha_fastpath",
    "export_onnx",
    "onnx_session",
    "run_onnx",
    "export_torchscript",
    "load_torchscript",
    "run_torchscript",
]

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("torchscript", "dynamo")
FILE_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
BATCH_AXIS = "batch"


class ExportError(RuntimeError):
    """An encoder could not be exported (the message names the encoder, format and reason)."""


def require_onnx(exporter: str = "torchscript") -> None:
    """Check that the packages ONNX export and verification need are importable.

    Raises:
        ImportError: naming the missing packages and the command that installs them.
    """
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if exporter == "dynamo" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}: pip install {' '.join(missing)} "
            "(or the optional extra: pip install 'fastreid-ext[export]')"
        )


@contextlib.contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """Switch PyTorch's fused multi-head-attention inference path on or off, then restore it."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the expected tracer / exporter warnings: Python conditions on shapes (the
    multi-batch verification checks the trace instead), the deprecation notices of torch 2.9+ for
    ``torch.jit`` and the legacy ONNX exporter, and the advanced-indexing note (the only indices
    are ``arange`` rows and the EOT argmax, never negative)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*")
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        yield


def _onnx_bytes(
    module: nn.Module, example: torch.Tensor, spec: EncoderSpec, opset: int, exporter: str
) -> bytes:
    names = dict(input_names=[spec.input_name], output_names=[spec.output_name])
    if exporter == "torchscript":
        buffer = io.BytesIO()
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            dynamic_axes={spec.input_name: {0: BATCH_AXIS}, spec.output_name: {0: BATCH_AXIS}},
            do_constant_folding=True,
            **names,
        )
        return buffer.getvalue()
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
        optimize=True,
        verbose=False,
        **names,
    )
    return program.model_proto.SerializeToString()


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    spec: EncoderSpec,
    path: str,
    opset: int = 17,
    exporter: str = "torchscript",
) -> None:
    """Export ``module`` (traced at ``example [b, ...]``) to the ONNX file ``path`` with a dynamic
    batch axis: input ``spec.input_name``, output ``spec.output_name``.

    Raises:
        ValueError: an unknown ``exporter``.
        ExportError: the exporter failed (its message is kept).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    try:
        with _quiet_export(), mha_fastpath(False), torch.no_grad():
            data = _onnx_bytes(module, example, spec, opset, exporter)
    except Exception as exc:  # the exporters raise many types; keep the message, name the step
        raise ExportError(
            f"ONNX export of the {spec.name} encoder failed (exporter {exporter}, opset {opset}): "
            f"{type(exc).__name__}: {_short(str(exc))}"
            + ("; try exporter 'torchscript' (the default)" if exporter == "dynamo" else "")
        ) from exc
    atomic_write_bytes(path, data)


def _short(message: str, limit: int = 1200) -> str:
    """The gist of an exporter error: torch.export's "Exception summary" section when there is
    one (its full message embeds the whole traced graph), at most ``limit`` characters."""
    marker = "## Exception summary"
    if marker in message:
        message = message.split(marker, 1)[1].strip()
    return message if len(message) <= limit else message[:limit] + " [...]"


def onnx_session(path: str, threads: int = 0):
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU (``CPUExecutionProvider``);
    ``threads`` > 0 sets its intra-op thread count (0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads > 0:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, spec: EncoderSpec, inputs: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` output of an ONNX ``session`` for ``inputs`` (a CPU tensor of the spec's dtype)."""
    out = session.run([spec.output_name], {spec.input_name: inputs.cpu().numpy()})[0]
    return torch.from_numpy(out)


def export_torchscript(
    module: nn.Module, example: torch.Tensor, spec: EncoderSpec, path: str
) -> None:
    """Trace ``module`` at ``example``, freeze it and save it to ``path`` (``torch.jit.save``)."""
    try:
        with _quiet_export(), torch.no_grad():
            traced = torch.jit.trace(module, (example,), check_trace=False)
            frozen = torch.jit.freeze(traced, optimize_numerics=False)
    except Exception as exc:
        raise ExportError(
            f"TorchScript export of the {spec.name} encoder failed: {type(exc).__name__}: {exc}"
        ) from exc
    with _quiet_export():
        atomic_torch_save(frozen, path, save=torch.jit.save)


def load_torchscript(path: str) -> torch.jit.ScriptModule:
    """The TorchScript encoder saved at ``path``, on the CPU."""
    with _quiet_export():
        return torch.jit.load(path, map_location="cpu")


def run_torchscript(module: torch.jit.ScriptModule, inputs: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` output of a TorchScript encoder for ``inputs``, without autograd."""
    with torch.no_grad():
        return module(inputs)
